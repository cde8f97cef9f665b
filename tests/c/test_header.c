/* Compiles diffgemma.h as strict C99 and exercises the library-level calls through the C ABI. */
#include "diffgemma.h"

#include <stdio.h>
#include <string.h>

int main(void) {
    const char * info;
    float src[64];
    unsigned char dst[64];
    size_t written = 0;
    int32_t status;
    int i;

    if (diffgemma_api_version() != DIFFGEMMA_API_VERSION) {
        fprintf(stderr, "api version mismatch: header %d, library %d\n", DIFFGEMMA_API_VERSION, (int) diffgemma_api_version());
        return 1;
    }
    info = diffgemma_system_info();
    if (info == NULL || strstr(info, "ggml") == NULL) {
        fprintf(stderr, "system_info lacks ggml: %s\n", info ? info : "(null)");
        return 1;
    }
    /* A bad argument must come back as a status with a reason, not a crash. */
    for (i = 0; i < 64; ++i) {
        src[i] = (float) i;
    }
    status = diffgemma_quantize_rows(9999, src, dst, 1, 64, sizeof dst, &written);
    if (status != DIFFGEMMA_ERR_UNSUPPORTED_TYPE || strlen(diffgemma_last_error()) == 0) {
        fprintf(stderr, "expected UNSUPPORTED_TYPE, got %d (%s)\n", (int) status, diffgemma_last_error());
        return 1;
    }
    printf("version=%s\n", diffgemma_version());
    printf("info=%s\n", info);
    printf("error=%s: %s\n", diffgemma_status_name(status), diffgemma_last_error());
    return 0;
}
