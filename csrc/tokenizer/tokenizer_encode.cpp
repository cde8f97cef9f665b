// Text -> tokens: added-token split, the "▁" normalizer, and byte-fallback BPE in HF's merge order.
#include "tokenizer/tokenizer.h"

#include <queue>

namespace {

constexpr std::string_view kSpacePiece = "\xE2\x96\x81";  // what the normalizer turns U+0020 into

// One BPE symbol of a word. Merged-away symbols keep their slot with `alive = false`, as in HF's Word.
struct Symbol {
    int32_t id;
    int32_t prev;  // index of the previous live symbol, -1 at the start
    int32_t next;  // index of the next live symbol, -1 at the end
    bool alive;
};

// A candidate merge of symbols[pos] with its right neighbour. Popped lowest rank first, then leftmost: the
// order of HF's BinaryHeap<Merge>.
struct Candidate {
    int32_t pos;
    int32_t rank;
    int32_t result;
};

struct LaterCandidate {
    bool operator()(const Candidate & a, const Candidate & b) const {
        return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
    }
};

}  // namespace

namespace dg {

const Vocab::Merge * Vocab::find_merge(int32_t left, int32_t right) const {
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
    const auto it = merges_.find(key);
    return it == merges_.end() ? nullptr : &it->second;
}

int32_t Vocab::match_added(std::string_view text, size_t pos, bool parse_special, size_t * len) const {
    int32_t node = 0, best = -1;
    for (size_t i = pos; i < text.size(); ++i) {
        const auto & next = trie_[static_cast<size_t>(node)].next;
        const auto it = next.find(static_cast<uint8_t>(text[i]));
        if (it == next.end()) break;
        node = it->second;
        const int32_t tok = trie_[static_cast<size_t>(node)].token;
        // Without parse_special only USER_DEFINED tokens count (CONTROL / UNKNOWN are left as plain text).
        if (tok >= 0 && (parse_special || types_[static_cast<size_t>(tok)] == TokenType::UserDefined)) {
            best = tok;
            *len = i + 1 - pos;
        }
    }
    return best;
}

void Vocab::tokenize(std::string_view text, bool add_bos, bool parse_special, std::vector<int32_t> & out) const {
    if (add_bos && bos_ >= 0) {
        out.push_back(bos_);
    }
    // Leftmost-longest scan for added tokens; the text between them is one BPE word each.
    size_t start = 0, pos = 0;
    while (pos < text.size()) {
        size_t len = 0;
        const int32_t id = match_added(text, pos, parse_special, &len);
        if (id < 0) {
            ++pos;
            continue;
        }
        tokenize_word(text.substr(start, pos - start), out);
        out.push_back(id);
        pos += len;
        start = pos;
    }
    tokenize_word(text.substr(start), out);
}

void Vocab::tokenize_word(std::string_view raw, std::vector<int32_t> & out) const {
    if (raw.empty()) return;

    // 1. Characters -> initial symbols (HF BPE::merge_word): the character's token, else its byte tokens,
    //    else <unk>, with consecutive unknowns fused. Like HF, a byte fallback does not flush a pending <unk>.
    std::vector<Symbol> symbols;
    symbols.reserve(raw.size());
    auto add = [&](int32_t id) {
        const int32_t i = static_cast<int32_t>(symbols.size());
        symbols.push_back(Symbol{id, i - 1, -1, true});
        if (i > 0) symbols[static_cast<size_t>(i - 1)].next = i;
    };
    bool unk_pending = false;
    for (size_t i = 0; i < raw.size();) {
        size_t n = utf8_char_len(raw.data() + i, raw.size() - i);
        const bool valid = n > 0;
        if (!valid) n = 1;  // a byte that is not UTF-8: a one-byte "character" no token can spell
        const std::string_view ch = raw[i] == ' ' ? kSpacePiece : raw.substr(i, n);
        i += n;
        const int32_t id = valid ? find(ch) : -1;
        if (id >= 0) {
            if (unk_pending) {
                add(unk_);
                unk_pending = false;
            }
            add(id);
            continue;
        }
        bool all_bytes = true;
        for (const char b : ch) all_bytes = all_bytes && byte_ids_[static_cast<uint8_t>(b)] >= 0;
        if (all_bytes) {
            for (const char b : ch) add(byte_ids_[static_cast<uint8_t>(b)]);
            continue;
        }
        if (unk_ >= 0) {
            unk_pending = true;  // fuse_unk: one <unk> for a run of unknown characters
        }
        // Without an <unk> token HF refuses the text; we drop the character rather than fail mid-stream.
    }
    if (unk_pending) add(unk_);

    // 2. Merges, replaying HF's Word::merge_all: a heap of candidates; a popped candidate is stale unless its
    //    pair still merges into the same token.
    std::priority_queue<Candidate, std::vector<Candidate>, LaterCandidate> heap;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
        if (const Merge * m = find_merge(symbols[i].id, symbols[i + 1].id)) {
            heap.push(Candidate{static_cast<int32_t>(i), m->rank, m->result});
        }
    }
    while (!heap.empty()) {
        const Candidate top = heap.top();
        heap.pop();
        Symbol & cur = symbols[static_cast<size_t>(top.pos)];
        if (!cur.alive || cur.next < 0) continue;
        const int32_t right_pos = cur.next;
        Symbol & right = symbols[static_cast<size_t>(right_pos)];
        const Merge * m = find_merge(cur.id, right.id);
        if (m == nullptr || m->result != top.result) continue;

        cur.id = top.result;
        cur.next = right.next;
        right.alive = false;
        if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = top.pos;

        if (cur.prev >= 0) {
            if (const Merge * pm = find_merge(symbols[static_cast<size_t>(cur.prev)].id, cur.id)) {
                heap.push(Candidate{cur.prev, pm->rank, pm->result});
            }
        }
        if (cur.next >= 0) {
            if (const Merge * nm = find_merge(cur.id, symbols[static_cast<size_t>(cur.next)].id)) {
                heap.push(Candidate{top.pos, nm->rank, nm->result});
            }
        }
    }
    for (const Symbol & s : symbols) {
        if (s.alive) out.push_back(s.id);
    }
}

}  // namespace dg
