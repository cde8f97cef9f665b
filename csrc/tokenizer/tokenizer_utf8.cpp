// UTF-8 helpers of the tokenizer: strict character boundaries (as Python's decoder sees them) and the
// incomplete-tail test that keeps streamed text from splitting a character.
#include "tokenizer/tokenizer.h"

namespace {

// Expected length of a sequence starting with `lead`: 1 for ASCII, 2..4 for a valid lead byte, 0 otherwise
// (a continuation byte, an overlong lead C0/C1, or F5..FF beyond U+10FFFF).
size_t sequence_length(unsigned char lead) {
    if (lead < 0x80) return 1;
    if (lead >= 0xC2 && lead <= 0xDF) return 2;
    if (lead >= 0xE0 && lead <= 0xEF) return 3;
    if (lead >= 0xF0 && lead <= 0xF4) return 4;
    return 0;
}

// The second byte's range depends on the lead: it rules out overlong forms, surrogates and > U+10FFFF.
bool second_byte_ok(unsigned char lead, unsigned char b) {
    switch (lead) {
        case 0xE0: return b >= 0xA0 && b <= 0xBF;
        case 0xED: return b >= 0x80 && b <= 0x9F;
        case 0xF0: return b >= 0x90 && b <= 0xBF;
        case 0xF4: return b >= 0x80 && b <= 0x8F;
        default:   return b >= 0x80 && b <= 0xBF;
    }
}

bool is_continuation(unsigned char b) { return (b & 0xC0) == 0x80; }

}  // namespace

namespace dg {

size_t utf8_char_len(const char * s, size_t n) {
    if (n == 0) return 0;
    const unsigned char lead = static_cast<unsigned char>(s[0]);
    const size_t len = sequence_length(lead);
    if (len <= 1 || len > n) return len == 1 ? 1 : 0;
    if (!second_byte_ok(lead, static_cast<unsigned char>(s[1]))) return 0;
    for (size_t i = 2; i < len; ++i) {
        if (!is_continuation(static_cast<unsigned char>(s[i]))) return 0;
    }
    return len;
}

size_t utf8_incomplete_tail(const char * s, size_t n) {
    size_t i = n, cont = 0;
    while (i > 0 && cont < 3 && is_continuation(static_cast<unsigned char>(s[i - 1]))) {
        --i;
        ++cont;
    }
    if (i == 0) return 0;  // only continuation bytes: nothing can complete them
    const unsigned char lead = static_cast<unsigned char>(s[i - 1]);
    const size_t need = sequence_length(lead);
    const size_t have = cont + 1;
    if (need <= 1 || have >= need) return 0;  // ASCII, an invalid lead, or a finished (maybe invalid) sequence
    if (cont >= 1 && !second_byte_ok(lead, static_cast<unsigned char>(s[i]))) return 0;  // already invalid
    return have;
}

}  // namespace dg
