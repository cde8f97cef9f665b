"""The measurement behind the quantized parity tests' choice of model (test_engine_parity.py): a trained model
damps the rounding of its weights, the random test models amplify it, the harsh default ones most."""
import engine_fixtures as fx
from perturbation_gain import layer_gain, weight_noise_amplification


def test_trained_model_damps_weight_rounding_random_models_amplify_it():
    trained = weight_noise_amplification(fx.sudoku_hf())    # measured 0.58
    calm = weight_noise_amplification(fx.hf_model("wide:calm"))  # 15.5
    harsh = weight_noise_amplification(fx.hf_model("wide"))      # 841
    print(f"logit NMSE per unit weight NMSE: trained sudoku {trained:.3g}, wide:calm {calm:.3g}, wide {harsh:.3g}")
    assert trained < 1.5
    assert calm > 5 * trained and harsh > 10 * calm


def test_per_layer_gain_of_a_trained_model_is_near_one():
    trained, harsh = layer_gain(fx.sudoku_hf()), layer_gain(fx.hf_model("wide"))  # measured 0.92, 2.80
    print(f"per-layer gain: trained sudoku {trained['gain']:.2f}, wide {harsh['gain']:.2f}")
    assert trained["gain"] < 1.2 < 2 < harsh["gain"]
