/*
 * voxgate._fastpath: the media plane's hot path in C, for the two modes real clients use.
 *
 * Every piece here replaces a piece of Python that stays, runs when this module is absent
 * (or VOXGATE_NO_EXTENSIONS=1), and is the reference the tests hold this one to, byte for
 * byte (server/fastpath.py chooses; STYLE.md section 7):
 *
 *   Cipher        TransportCipher.open_split / seal_split of aead_aes256_gcm_rtpsize and
 *                 aead_xchacha20_poly1305_rtpsize (protocol/crypto.py), with the nonce
 *                 counter. AES-256-GCM is AES-NI and PCLMULQDQ here where the CPU has
 *                 them, OpenSSL's elsewhere; XChaCha20-Poly1305 is HChaCha20 and
 *                 ChaCha20-Poly1305 here (a key per packet, which OpenSSL sets up slowly).
 *   ReplayWindow  guard.ReplayWindow over the 32-bit nonce suffix.
 *   RateLimit     guard.RateLimit.
 *   Relay.pump    MediaEndpoint.datagram_received + Router.forward for the common case:
 *                 recvmmsg a batch; for each RTP packet of a described sender whose channel
 *                 forwards unfiltered to receivers that all have a Cipher here, open, check
 *                 the replay window and the rate cap, seal for every receiver, and send
 *                 everything with sendmmsg. Who those receivers are is read from the Python
 *                 objects on a sender's first packet and kept (a route) until the router's
 *                 generation changes; the counters it bumps are added once per pump. Anything else (discovery, keep-alives, RTCP,
 *                 unknown ssrcs, other modes, a sender that moved, any packet to be dropped,
 *                 a DAVE-filtered call) is handed back to Python untouched, before any
 *                 state changed, and Python does what it always does: every drop is counted
 *                 by the Python code, never here.
 *
 * The state (nonce counters, replay windows, token buckets) lives in these objects and the
 * Python path uses them too while this module is loaded, so a channel can go from one path
 * to the other packet by packet without reusing a nonce.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdint.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif
#include <string.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define KIND_AES 0
#define KIND_XCHACHA 1
#define TAG 16
#define SUFFIX 4
#define BATCH 32
#define RECV_SIZE 65536
#define MAX_OUT 1024          /* UIO_MAXIOV: datagrams one sendmmsg takes */
#define ARENA (1 << 20)       /* sealed datagrams waiting for the next sendmmsg */
#define ROUNDS 8              /* recvmmsg batches per pump() before the loop gets a turn */
/* Seconds between additions of the members' own counters (packets_in, packets_out,
 * last_media_at) to their Python sessions. Per pump, it cost a tenth of the relay's CPU at
 * saturation (a pump's packets reach nearly every member once); their readers (the
 * console's rates, the silence check) look at them once a second. Relay.sync() adds them
 * at once. */
#define MEMBER_COUNTERS_S 0.25

static PyObject *DecryptionError, *PacketError;
static PyObject *s_cipher, *s_replay, *s_rate, *s_muted, *s_channel, *s_forward, *s_members,
    *s_address, *s_last_media_at, *s_packets_in, *s_packets_out, *s_bytes_in, *s_bytes_out,
    *s_send_errors, *s_generation;

/* --- HChaCha20 (draft-irtf-cfrg-xchacha section 2.2) ----------------------------------- */

#define ROTL(v, n) (((v) << (n)) | ((v) >> (32 - (n))))
#define QR(a, b, c, d)                                                          \
    a += b; d ^= a; d = ROTL(d, 16); c += d; b ^= c; b = ROTL(b, 12);           \
    a += b; d ^= a; d = ROTL(d, 8); c += d; b ^= c; b = ROTL(b, 7)

/* The 20 rounds (10 column and diagonal double rounds) over the 16-word state `x`: of
 * uint32_t words for HChaCha20, of 4-lane vectors for chacha20_blocks. */
#define CHACHA20_ROUNDS(x)                                                      \
    for (int round_ = 0; round_ < 10; round_++) {                               \
        QR(x[0], x[4], x[8], x[12]);                                            \
        QR(x[1], x[5], x[9], x[13]);                                            \
        QR(x[2], x[6], x[10], x[14]);                                           \
        QR(x[3], x[7], x[11], x[15]);                                           \
        QR(x[0], x[5], x[10], x[15]);                                           \
        QR(x[1], x[6], x[11], x[12]);                                           \
        QR(x[2], x[7], x[8], x[13]);                                            \
        QR(x[3], x[4], x[9], x[14]);                                            \
    }

static inline uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void hchacha20(const unsigned char key[32], const unsigned char nonce[16],
                      unsigned char out[32]) {
    uint32_t x[16] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574};
    for (int i = 0; i < 8; i++) x[4 + i] = le32(key + 4 * i);
    for (int i = 0; i < 4; i++) x[12 + i] = le32(nonce + 4 * i);
    CHACHA20_ROUNDS(x);
    static const int words[8] = {0, 1, 2, 3, 12, 13, 14, 15};
    for (int i = 0; i < 8; i++) {
        uint32_t w = x[words[i]];
        out[4 * i] = (unsigned char)w;
        out[4 * i + 1] = (unsigned char)(w >> 8);
        out[4 * i + 2] = (unsigned char)(w >> 16);
        out[4 * i + 3] = (unsigned char)(w >> 24);
    }
}

/* --- ChaCha20-Poly1305 (RFC 8439) --------------------------------------------------------
 *
 * XChaCha20 packets have a key of their own each (HChaCha20 of the counter), and OpenSSL's
 * EVP setup of a ChaCha20-Poly1305 key costs more than sealing an Opus frame with it: the
 * measured seal took 2.6 times AES-GCM's. Here the key setup is 16 words, and a packet up
 * to 128 bytes is three ChaCha20 blocks and at most ten Poly1305 blocks.
 *
 * What a packet's seal or open leaves on the stack (its subkey, key stream, Poly1305 key
 * and state) is not wiped: each serves the one counter it was made for, which no packet
 * uses again, and wiping it cost a fifth of a shared seal (xchacha_seal_many). The member's own key is wiped where
 * a copy of it is made (xchacha_seal_many) and when its Cipher goes. */

static inline void store32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* The big-endian 32-bit counter a datagram ends with. */
static inline void store_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static inline uint64_t le64(const unsigned char *p) {
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* Four 64-byte key stream blocks, `first` to `first` + 3, into `out`, one block per lane
 * of a 4 x 32-bit vector (SSE2 on x86-64, NEON on arm64: what every compiler of the
 * vector extension makes of it). The nonce is all zeros: XChaCha20's IETF nonce is 4 zero
 * bytes and nonce[16:24], zeros in the rtpsize modes.
 *
 * It is built twice, and the import picks the AVX-512VL build where the CPU has it: there
 * a rotation is one instruction instead of two shifts and an OR, and 32 registers hold the
 * state (213 instructions against 309). With the transpose below and the XOR a word at a
 * time, an XChaCha20 seal of 100 bytes went from 640 to 505-545 ns (AES-GCM's: 200). */
typedef uint32_t u32x4 __attribute__((vector_size(16)));

#ifdef __clang__
#define SHUFFLE(a, b, i, j, k, l) __builtin_shufflevector(a, b, i, j, k, l)
#else
#define SHUFFLE(a, b, i, j, k, l) __builtin_shuffle(a, b, (u32x4){i, j, k, l})
#endif

static inline __attribute__((always_inline)) void
chacha20_blocks_body(const uint32_t key[8], uint32_t first, unsigned char out[256]) {
    u32x4 in[16], x[16];
    static const uint32_t sigma[4] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574};
    for (int i = 0; i < 4; i++) in[i] = (u32x4){sigma[i], sigma[i], sigma[i], sigma[i]};
    for (int i = 0; i < 8; i++) in[4 + i] = (u32x4){key[i], key[i], key[i], key[i]};
    in[12] = (u32x4){first, first + 1, first + 2, first + 3};
    in[13] = in[14] = in[15] = (u32x4){0, 0, 0, 0};
    memcpy(x, in, sizeof x);
    CHACHA20_ROUNDS(x);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    /* Lane j of words i..i+3 is 16 bytes of block j: a 4 x 4 transpose, not 64 stores. */
    for (int i = 0; i < 16; i += 4) {
        u32x4 a = x[i] + in[i], b = x[i + 1] + in[i + 1];
        u32x4 c = x[i + 2] + in[i + 2], d = x[i + 3] + in[i + 3];
        u32x4 ab_low = SHUFFLE(a, b, 0, 4, 1, 5);
        u32x4 ab_high = SHUFFLE(a, b, 2, 6, 3, 7);
        u32x4 cd_low = SHUFFLE(c, d, 0, 4, 1, 5);
        u32x4 cd_high = SHUFFLE(c, d, 2, 6, 3, 7);
        u32x4 lanes[4] = {
            SHUFFLE(ab_low, cd_low, 0, 1, 4, 5),
            SHUFFLE(ab_low, cd_low, 2, 3, 6, 7),
            SHUFFLE(ab_high, cd_high, 0, 1, 4, 5),
            SHUFFLE(ab_high, cd_high, 2, 3, 6, 7),
        };
        for (int lane = 0; lane < 4; lane++) memcpy(out + 64 * lane + 4 * i, &lanes[lane], 16);
    }
#else
    for (int i = 0; i < 16; i++) {
        u32x4 word = x[i] + in[i];
        for (int lane = 0; lane < 4; lane++) store32(out + 64 * lane + 4 * i, word[lane]);
    }
#endif
}

static void chacha20_blocks_generic(const uint32_t key[8], uint32_t first,
                                    unsigned char out[256]) {
    chacha20_blocks_body(key, first, out);
}

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_CHACHA_AVX512 1
__attribute__((target("avx512f,avx512vl"))) static void
chacha20_blocks_avx512(const uint32_t key[8], uint32_t first, unsigned char out[256]) {
    chacha20_blocks_body(key, first, out);
}
#endif

/* chacha20_blocks_avx512 where the CPU has AVX-512VL (chosen at import), else generic. */
static void (*chacha20_blocks)(const uint32_t key[8], uint32_t first, unsigned char out[256]) =
    chacha20_blocks_generic;

/* `out` = `in` XOR the key stream from block 1 on; `stream` holds blocks 0-3 already
 * (block 0 keys Poly1305). */
static void chacha20_xor(const uint32_t key[8], unsigned char stream[256],
                         const unsigned char *in, Py_ssize_t len, unsigned char *out) {
    Py_ssize_t offset = 64; /* into `stream` */
    for (uint32_t next = 4; len > 0; next += 4) {
        Py_ssize_t n = len < 256 - offset ? len : 256 - offset;
        Py_ssize_t i = 0;
        for (; i + 8 <= n; i += 8) {
            uint64_t word, pad;
            memcpy(&word, in + i, 8);
            memcpy(&pad, stream + offset + i, 8);
            word ^= pad;
            memcpy(out + i, &word, 8);
        }
        for (; i < n; i++) out[i] = in[i] ^ stream[offset + i];
        in += n;
        out += n;
        len -= n;
        if (len > 0) {
            chacha20_blocks(key, next, stream);
            offset = 0;
        }
    }
}

/* Poly1305 in three limbs of 44, 44 and 42 bits (the 64-bit "donna" layout). */
typedef struct {
    uint64_t r0, r1, r2, s1, s2, h0, h1, h2, pad0, pad1;
} poly1305_t;

#define M44 UINT64_C(0xfffffffffff)
#define M42 UINT64_C(0x3ffffffffff)

static void poly1305_init(poly1305_t *st, const unsigned char key[32]) {
    uint64_t t0 = le64(key), t1 = le64(key + 8);
    st->r0 = t0 & UINT64_C(0xffc0fffffff);
    st->r1 = ((t0 >> 44) | (t1 << 20)) & UINT64_C(0xfffffc0ffff);
    st->r2 = (t1 >> 24) & UINT64_C(0x00ffffffc0f);
    st->s1 = st->r1 * (5 << 2);
    st->s2 = st->r2 * (5 << 2);
    st->h0 = st->h1 = st->h2 = 0;
    st->pad0 = le64(key + 16);
    st->pad1 = le64(key + 24);
}

/* Whole 16-byte blocks of `m`; a last partial block is padded with zeros, as the AEAD's
 * construction pads every part to 16 bytes (so every block has the 2^128 bit). */
static void poly1305_blocks(poly1305_t *st, const unsigned char *m, Py_ssize_t len) {
    uint64_t r0 = st->r0, r1 = st->r1, r2 = st->r2, s1 = st->s1, s2 = st->s2;
    uint64_t h0 = st->h0, h1 = st->h1, h2 = st->h2;
    unsigned char last[16];
    while (len > 0) {
        if (len < 16) {
            memset(last, 0, sizeof last);
            memcpy(last, m, (size_t)len);
            m = last;
            len = 16;
        }
        uint64_t t0 = le64(m), t1 = le64(m + 8);
        h0 += t0 & M44;
        h1 += ((t0 >> 44) | (t1 << 20)) & M44;
        h2 += ((t1 >> 24) & M42) | (UINT64_C(1) << 40);
        unsigned __int128 d0 = (unsigned __int128)h0 * r0 + (unsigned __int128)h1 * s2 +
                               (unsigned __int128)h2 * s1;
        unsigned __int128 d1 = (unsigned __int128)h0 * r1 + (unsigned __int128)h1 * r0 +
                               (unsigned __int128)h2 * s2;
        unsigned __int128 d2 = (unsigned __int128)h0 * r2 + (unsigned __int128)h1 * r1 +
                               (unsigned __int128)h2 * r0;
        uint64_t c = (uint64_t)(d0 >> 44);
        h0 = (uint64_t)d0 & M44;
        d1 += c;
        c = (uint64_t)(d1 >> 44);
        h1 = (uint64_t)d1 & M44;
        d2 += c;
        c = (uint64_t)(d2 >> 42);
        h2 = (uint64_t)d2 & M42;
        h0 += c * 5;
        c = h0 >> 44;
        h0 &= M44;
        h1 += c;
        m += 16;
        len -= 16;
    }
    st->h0 = h0;
    st->h1 = h1;
    st->h2 = h2;
}

static void poly1305_finish(poly1305_t *st, unsigned char mac[16]) {
    uint64_t h0 = st->h0, h1 = st->h1, h2 = st->h2, c;
    c = h1 >> 44; h1 &= M44;
    h2 += c; c = h2 >> 42; h2 &= M42;
    h0 += c * 5; c = h0 >> 44; h0 &= M44;
    h1 += c; c = h1 >> 44; h1 &= M44;
    h2 += c; c = h2 >> 42; h2 &= M42;
    h0 += c * 5; c = h0 >> 44; h0 &= M44;
    h1 += c;
    /* h - p, kept when h >= p (without a branch on the secret) */
    uint64_t g0 = h0 + 5; c = g0 >> 44; g0 &= M44;
    uint64_t g1 = h1 + c; c = g1 >> 44; g1 &= M44;
    uint64_t g2 = h2 + c - (UINT64_C(1) << 42);
    uint64_t keep = (g2 >> 63) - 1; /* all ones when h >= p */
    h0 = (h0 & ~keep) | (g0 & keep);
    h1 = (h1 & ~keep) | (g1 & keep);
    h2 = (h2 & ~keep) | (g2 & keep);
    /* + s, mod 2^128 */
    uint64_t t0 = st->pad0, t1 = st->pad1;
    h0 += t0 & M44; c = h0 >> 44; h0 &= M44;
    h1 += (((t0 >> 44) | (t1 << 20)) & M44) + c; c = h1 >> 44; h1 &= M44;
    h2 += ((t1 >> 24) & M42) + c; h2 &= M42;
    uint64_t lo = h0 | (h1 << 44), hi = (h1 >> 20) | (h2 << 24);
    store32(mac, (uint32_t)lo);
    store32(mac + 4, (uint32_t)(lo >> 32));
    store32(mac + 8, (uint32_t)hi);
    store32(mac + 12, (uint32_t)(hi >> 32));
}

/* The AEAD tag of `aad` and `ciphertext`, Poly1305 keyed by the first 32 bytes of key
 * stream block 0. */
static void chacha20_poly1305_tag(const unsigned char poly_key[32], const unsigned char *aad,
                                  Py_ssize_t aad_len, const unsigned char *ciphertext,
                                  Py_ssize_t len, unsigned char tag[16]) {
    unsigned char lengths[16];
    poly1305_t st;
    poly1305_init(&st, poly_key);
    poly1305_blocks(&st, aad, aad_len);
    poly1305_blocks(&st, ciphertext, len);
    store32(lengths, (uint32_t)aad_len);
    store32(lengths + 4, (uint32_t)((uint64_t)aad_len >> 32));
    store32(lengths + 8, (uint32_t)len);
    store32(lengths + 12, (uint32_t)((uint64_t)len >> 32));
    poly1305_blocks(&st, lengths, 16);
    poly1305_finish(&st, tag);
}

static void chacha20_key(const unsigned char subkey[32], uint32_t key[8]) {
    for (int i = 0; i < 8; i++) key[i] = le32(subkey + 4 * i);
}

/* --- AES-256-GCM with AES-NI and PCLMULQDQ (NIST SP 800-38D, 96-bit IV) --------------
 *
 * OpenSSL 3 seals a packet through its provider layer: an IV set, two updates, a final
 * and a tag read, each a dispatch with parameter lookups, over a context of a kilobyte
 * per direction per member. At 1,600 members those contexts are cold and the layer cost
 * more than the AES and GHASH themselves. Here a key is its 15 round keys and 4 powers of
 * H (304 bytes), and a 100-byte payload is one batch of 8 AES blocks and 2 GHASH
 * reductions. x86-64 with AES-NI, PCLMULQDQ and SSE4.1 only, checked at run time;
 * elsewhere, or after _aes_gcm("openssl"), OpenSSL does it. */
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AES_GCM_X86 1
#include <immintrin.h>

#define AESGCM_TARGET __attribute__((target("aes,pclmul,ssse3,sse4.1")))

typedef struct {
    unsigned char round_keys[15][16];
    /* H = AES_K(0) and H^2, H^3, H^4, byte-reversed: GHASH works on reflected blocks, four
     * at a time (Y + X1)H^4 + X2 H^3 + X3 H^2 + X4 H with one reduction. */
    unsigned char h[4][16];
} aes_gcm_key;

AESGCM_TARGET static inline __m128i aes_expand_even(__m128i key, __m128i assist) {
    assist = _mm_shuffle_epi32(assist, 0xff);
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    return _mm_xor_si128(key, assist);
}

AESGCM_TARGET static inline __m128i aes_expand_odd(__m128i key, __m128i even) {
    __m128i assist = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(even, 0), 0xaa);
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    return _mm_xor_si128(key, assist);
}

static const unsigned char reverse_bytes[16] = {15, 14, 13, 12, 11, 10, 9, 8,
                                                7,  6,  5,  4,  3,  2,  1, 0};

AESGCM_TARGET static inline __m128i aes_encrypt_block(const aes_gcm_key *k, __m128i block) {
    block = _mm_xor_si128(block, _mm_loadu_si128((const __m128i *)k->round_keys[0]));
    for (int i = 1; i < 14; i++)
        block = _mm_aesenc_si128(block, _mm_loadu_si128((const __m128i *)k->round_keys[i]));
    return _mm_aesenclast_si128(block, _mm_loadu_si128((const __m128i *)k->round_keys[14]));
}

/* GHASH on reflected blocks (Gueron and Kounavis, Intel's carry-less multiplication white
 * paper): the 256-bit carry-less product of two blocks as (lo, hi), then shifted left by
 * one and reduced modulo x^128 + x^7 + x^2 + x + 1. Products of several blocks are added
 * before a single reduction, which is linear. */
typedef struct {
    __m128i lo, hi;
} ghash_product;

AESGCM_TARGET static inline ghash_product ghash_clmul(__m128i a, __m128i b) {
    __m128i mid = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x10),
                                _mm_clmulepi64_si128(a, b, 0x01));
    ghash_product p;
    p.lo = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x00), _mm_slli_si128(mid, 8));
    p.hi = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x11), _mm_srli_si128(mid, 8));
    return p;
}

AESGCM_TARGET static inline void ghash_add(ghash_product *sum, ghash_product p) {
    sum->lo = _mm_xor_si128(sum->lo, p.lo);
    sum->hi = _mm_xor_si128(sum->hi, p.hi);
}

AESGCM_TARGET static inline __m128i ghash_reduce(ghash_product p) {
    __m128i lo = p.lo, hi = p.hi;
    __m128i lo_carry = _mm_srli_epi32(lo, 31), hi_carry = _mm_srli_epi32(hi, 31);
    lo = _mm_slli_epi32(lo, 1);
    hi = _mm_slli_epi32(hi, 1);
    hi = _mm_or_si128(_mm_or_si128(hi, _mm_slli_si128(hi_carry, 4)),
                      _mm_srli_si128(lo_carry, 12));
    lo = _mm_or_si128(lo, _mm_slli_si128(lo_carry, 4));
    __m128i t = _mm_xor_si128(_mm_xor_si128(_mm_slli_epi32(lo, 31), _mm_slli_epi32(lo, 30)),
                              _mm_slli_epi32(lo, 25));
    lo = _mm_xor_si128(lo, _mm_slli_si128(t, 12));
    __m128i u = _mm_xor_si128(_mm_xor_si128(_mm_srli_epi32(lo, 1), _mm_srli_epi32(lo, 2)),
                              _mm_srli_epi32(lo, 7));
    u = _mm_xor_si128(u, _mm_srli_si128(t, 4));
    return _mm_xor_si128(hi, _mm_xor_si128(lo, u));
}

AESGCM_TARGET static inline __m128i ghash_multiply(__m128i a, __m128i b) {
    return ghash_reduce(ghash_clmul(a, b));
}

/* GHASH state `y` over `data`, zero-padded to whole blocks. */
AESGCM_TARGET static __m128i ghash_update(const aes_gcm_key *k, __m128i y,
                                          const unsigned char *data, size_t len) {
    const __m128i reverse = _mm_loadu_si128((const __m128i *)reverse_bytes);
    const __m128i h1 = _mm_loadu_si128((const __m128i *)k->h[0]);
    if (len >= 64) {
        const __m128i h2 = _mm_loadu_si128((const __m128i *)k->h[1]);
        const __m128i h3 = _mm_loadu_si128((const __m128i *)k->h[2]);
        const __m128i h4 = _mm_loadu_si128((const __m128i *)k->h[3]);
        for (; len >= 64; data += 64, len -= 64) {
            __m128i x1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)data), reverse);
            __m128i x2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16)), reverse);
            __m128i x3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 32)), reverse);
            __m128i x4 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 48)), reverse);
            ghash_product sum = ghash_clmul(_mm_xor_si128(y, x1), h4);
            ghash_add(&sum, ghash_clmul(x2, h3));
            ghash_add(&sum, ghash_clmul(x3, h2));
            ghash_add(&sum, ghash_clmul(x4, h1));
            y = ghash_reduce(sum);
        }
    }
    for (; len >= 16; data += 16, len -= 16) {
        __m128i x = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)data), reverse);
        y = ghash_multiply(_mm_xor_si128(y, x), h1);
    }
    if (len) {
        unsigned char last[16] = {0};
        memcpy(last, data, len);
        __m128i x = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)last), reverse);
        y = ghash_multiply(_mm_xor_si128(y, x), h1);
    }
    return y;
}

AESGCM_TARGET static void aes_gcm_setup(aes_gcm_key *k, const unsigned char key[32]) {
    __m128i r[15];
    r[0] = _mm_loadu_si128((const __m128i *)key);
    r[1] = _mm_loadu_si128((const __m128i *)(key + 16));
#define AES_EXPAND_PAIR(i, rcon)                                                   \
    r[i] = aes_expand_even(r[i - 2], _mm_aeskeygenassist_si128(r[i - 1], rcon));   \
    if (i + 1 < 15) r[i + 1] = aes_expand_odd(r[i - 1], r[i])
    AES_EXPAND_PAIR(2, 0x01);
    AES_EXPAND_PAIR(4, 0x02);
    AES_EXPAND_PAIR(6, 0x04);
    AES_EXPAND_PAIR(8, 0x08);
    AES_EXPAND_PAIR(10, 0x10);
    AES_EXPAND_PAIR(12, 0x20);
    r[14] = aes_expand_even(r[12], _mm_aeskeygenassist_si128(r[13], 0x40));
#undef AES_EXPAND_PAIR
    for (int i = 0; i < 15; i++) _mm_storeu_si128((__m128i *)k->round_keys[i], r[i]);
    __m128i h = aes_encrypt_block(k, _mm_setzero_si128());
    h = _mm_shuffle_epi8(h, _mm_loadu_si128((const __m128i *)reverse_bytes));
    __m128i power = h;
    for (int i = 0; i < 4; i++) {
        _mm_storeu_si128((__m128i *)k->h[i], power);
        power = ghash_multiply(power, h);
    }
}

#define AES_GCM_WIDE 8

/* `in` XOR the keystream of counter blocks 2, 3, ... after J0 = iv || 1, into `out`, and
 * AES_K(J0), the tag's mask, which comes with the first blocks: eight blocks at a time so
 * the rounds of neighbouring blocks overlap (a 100-byte payload is one batch). */
AESGCM_TARGET static __m128i aes_gcm_crypt(const aes_gcm_key *k, const unsigned char iv[12],
                                           const unsigned char *in, size_t len,
                                           unsigned char *out) {
    unsigned char base[16] = {0};
    memcpy(base, iv, 12);
    const __m128i j = _mm_loadu_si128((const __m128i *)base);
    __m128i mask = _mm_setzero_si128();
    uint32_t counter = 1;
    int first = 1;
    while (first || len) {
        __m128i b[AES_GCM_WIDE];
        size_t wanted = (len + 15) / 16 + (size_t)first;
        int blocks = wanted < AES_GCM_WIDE ? (int)wanted : AES_GCM_WIDE;
        for (int i = 0; i < blocks; i++)
            b[i] = _mm_insert_epi32(j, (int)__builtin_bswap32(counter + (uint32_t)i), 3);
        counter += (uint32_t)blocks;
        __m128i key = _mm_loadu_si128((const __m128i *)k->round_keys[0]);
        for (int i = 0; i < blocks; i++) b[i] = _mm_xor_si128(b[i], key);
        for (int r = 1; r < 14; r++) {
            key = _mm_loadu_si128((const __m128i *)k->round_keys[r]);
            for (int i = 0; i < blocks; i++) b[i] = _mm_aesenc_si128(b[i], key);
        }
        key = _mm_loadu_si128((const __m128i *)k->round_keys[14]);
        for (int i = 0; i < blocks; i++) b[i] = _mm_aesenclast_si128(b[i], key);
        int i = 0;
        if (first) {
            mask = b[0];
            i = 1;
            first = 0;
        }
        for (; i < blocks; i++) {
            if (len >= 16) {
                __m128i x = _mm_loadu_si128((const __m128i *)in);
                _mm_storeu_si128((__m128i *)out, _mm_xor_si128(x, b[i]));
                in += 16;
                out += 16;
                len -= 16;
            } else {
                unsigned char stream[16];
                _mm_storeu_si128((__m128i *)stream, b[i]);
                for (size_t m = 0; m < len; m++) out[m] = in[m] ^ stream[m];
                len = 0;
            }
        }
    }
    return mask;
}

/* GHASH of (aad, ciphertext) and their lengths, masked: the tag. */
AESGCM_TARGET static void aes_gcm_tag(const aes_gcm_key *k, __m128i mask,
                                      const unsigned char *aad, size_t aad_len,
                                      const unsigned char *sealed, size_t sealed_len,
                                      unsigned char tag[16]) {
    const __m128i reverse = _mm_loadu_si128((const __m128i *)reverse_bytes);
    __m128i y = ghash_update(k, _mm_setzero_si128(), aad, aad_len);
    y = ghash_update(k, y, sealed, sealed_len);
    /* [len(A)]64 || [len(C)]64 in bits, big-endian; reflected, len(C) is the low half. */
    __m128i lengths = _mm_set_epi64x((long long)aad_len * 8, (long long)sealed_len * 8);
    y = ghash_multiply(_mm_xor_si128(y, lengths), _mm_loadu_si128((const __m128i *)k->h[0]));
    _mm_storeu_si128((__m128i *)tag, _mm_xor_si128(_mm_shuffle_epi8(y, reverse), mask));
}

/* Ciphertext of `plain` into `out` and the tag into `tag`. */
AESGCM_TARGET static void aes_gcm_seal(const aes_gcm_key *k, const unsigned char iv[12],
                                       const unsigned char *aad, size_t aad_len,
                                       const unsigned char *plain, size_t len,
                                       unsigned char *out, unsigned char tag[16]) {
    __m128i mask = aes_gcm_crypt(k, iv, plain, len, out);
    aes_gcm_tag(k, mask, aad, aad_len, out, len, tag);
}

/* The plaintext of `sealed` into `out` when `tag` authenticates it: 1; else 0, and `out`
 * holds zeros. */
AESGCM_TARGET static int aes_gcm_open(const aes_gcm_key *k, const unsigned char iv[12],
                                      const unsigned char *aad, size_t aad_len,
                                      const unsigned char *sealed, size_t len,
                                      const unsigned char tag[16], unsigned char *out) {
    unsigned char expected[16];
    __m128i mask = aes_gcm_crypt(k, iv, sealed, len, out);
    aes_gcm_tag(k, mask, aad, aad_len, sealed, len, expected);
    if (CRYPTO_memcmp(expected, tag, 16) == 0) return 1;
    memset(out, 0, len);
    return 0;
}

static int aes_gcm_x86_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul") &&
           __builtin_cpu_supports("ssse3") && __builtin_cpu_supports("sse4.1");
}
#endif

/* Whether Ciphers set up from now on seal AES-256-GCM here (1) or with OpenSSL (0). */
static int aes_gcm_x86;

/* --- Cipher ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int kind; /* -1 until _native_setup */
    uint32_t nonce;
    unsigned char key[32];
    EVP_CIPHER_CTX *seal_ctx, *open_ctx;
#ifdef HAVE_AES_GCM_X86
    int x86;          /* AES-256-GCM here, not OpenSSL's */
    aes_gcm_key gcm;
#endif
    PyObject *address; /* the address tuple `sockaddr` was made from, or NULL */
    struct sockaddr_in sockaddr;
    unsigned long long pending_out; /* sealed by the Relay this pump, not yet counted */
} CipherObject;

static PyTypeObject CipherType;

/* Key and IV of one packet: the 4-byte counter leads the nonce (12 bytes for AES-GCM, 24
 * for XChaCha20), zeros fill the rest; for XChaCha20 the subkey is HChaCha20(key, nonce[:16])
 * and the IETF nonce is 4 zero bytes + nonce[16:24], all zeros here. */
static const unsigned char *packet_key(CipherObject *c, const unsigned char counter[4],
                                       unsigned char subkey[32], unsigned char iv[12]) {
    memset(iv, 0, 12);
    if (c->kind == KIND_AES) {
        memcpy(iv, counter, 4);
        return NULL;
    }
    unsigned char head[16] = {0};
    memcpy(head, counter, 4);
    hchacha20(c->key, head, subkey);
    return subkey;
}

/* ciphertext + tag of `plain` into `out`; 0, or -1 when OpenSSL fails. */
static int aead_seal(CipherObject *c, const unsigned char *aad, Py_ssize_t aad_len,
                     const unsigned char *plain, Py_ssize_t plain_len,
                     const unsigned char counter[4], unsigned char *out) {
    unsigned char iv[12], subkey[32];
    const unsigned char *key = packet_key(c, counter, subkey, iv);
    if (c->kind == KIND_XCHACHA) {
        uint32_t words[8];
        unsigned char stream[256], block0[64];
        chacha20_key(subkey, words);
        chacha20_blocks(words, 0, stream);
        memcpy(block0, stream, 64);
        chacha20_xor(words, stream, plain, plain_len, out);
        chacha20_poly1305_tag(block0, aad, aad_len, out, plain_len, out + plain_len);
        return 0;
    }
#ifdef HAVE_AES_GCM_X86
    if (c->x86) {
        aes_gcm_seal(&c->gcm, iv, aad, (size_t)aad_len, plain, (size_t)plain_len, out,
                     out + plain_len);
        return 0;
    }
#endif
    int n;
    EVP_CIPHER_CTX *ctx = c->seal_ctx;
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, key, iv) != 1) return -1;
    if (aad_len && EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1) return -1;
    if (EVP_EncryptUpdate(ctx, out, &n, plain, (int)plain_len) != 1) return -1;
    if (EVP_EncryptFinal_ex(ctx, out + n, &n) != 1) return -1;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG, out + plain_len) != 1) return -1;
    return 0;
}

/* Opens `sealed` (ciphertext + tag) into `out`; the plaintext length, or -1. */
static Py_ssize_t aead_open(CipherObject *c, const unsigned char *aad, Py_ssize_t aad_len,
                            const unsigned char *sealed, Py_ssize_t sealed_len,
                            const unsigned char counter[4], unsigned char *out) {
    unsigned char iv[12], subkey[32], tag[TAG];
    const unsigned char *key = packet_key(c, counter, subkey, iv);
    Py_ssize_t plain_len = sealed_len - TAG;
    if (c->kind == KIND_XCHACHA) {
        uint32_t words[8];
        unsigned char stream[256];
        chacha20_key(subkey, words);
        chacha20_blocks(words, 0, stream);
        chacha20_poly1305_tag(stream, aad, aad_len, sealed, plain_len, tag);
        int authentic = CRYPTO_memcmp(tag, sealed + plain_len, TAG) == 0;
        if (authentic) chacha20_xor(words, stream, sealed, plain_len, out);
        return authentic ? plain_len : -1;
    }
#ifdef HAVE_AES_GCM_X86
    if (c->x86)
        return aes_gcm_open(&c->gcm, iv, aad, (size_t)aad_len, sealed, (size_t)plain_len,
                            sealed + plain_len, out)
                   ? plain_len
                   : -1;
#endif
    int n;
    EVP_CIPHER_CTX *ctx = c->open_ctx;
    memcpy(tag, sealed + plain_len, TAG);
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, key, iv) != 1) return -1;
    if (aad_len && EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1) return -1;
    if (EVP_DecryptUpdate(ctx, out, &n, sealed, (int)plain_len) != 1) return -1;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG, tag) != 1) return -1;
    if (EVP_DecryptFinal_ex(ctx, out + n, &n) != 1) return -1;
    return plain_len;
}

/* Bytes of an rtpsize packet left in clear (12 + 4*CC, + 4 with an extension), or -1
 * when it is not RTP or shorter than that: crypto._clear_size. */
static Py_ssize_t clear_size(const unsigned char *p, Py_ssize_t len) {
    if (len < 12 || (p[0] >> 6) != 2) return -1;
    Py_ssize_t size = 12 + 4 * (p[0] & 0x0f) + ((p[0] & 0x10) ? 4 : 0);
    return len < size ? -1 : size;
}

enum { OPENED = 0, MALFORMED = 1, NOT_AUTHENTIC = 2 };

/* TransportCipher.open_split's checks, in its order; the plaintext goes to `plain`. */
static int open_packet(CipherObject *c, const unsigned char *p, Py_ssize_t len,
                       Py_ssize_t *clear_out, unsigned char *plain, Py_ssize_t *plain_len) {
    Py_ssize_t clear = clear_size(p, len);
    if (clear < 0) return MALFORMED;
    if (len - clear < TAG + SUFFIX) return NOT_AUTHENTIC;
    Py_ssize_t n = aead_open(c, p, clear, p + clear, len - clear - SUFFIX, p + len - SUFFIX, plain);
    if (n < 0) return NOT_AUTHENTIC;
    if (p[0] & 0x10) {
        Py_ssize_t body = 4 * (((Py_ssize_t)p[clear - 2] << 8) | p[clear - 1]);
        if (n < body) return MALFORMED;
    }
    *clear_out = clear;
    *plain_len = n;
    return OPENED;
}

/* One sealed datagram into `out`: clear header, ciphertext, tag, big-endian counter. */
static Py_ssize_t seal_packet(CipherObject *c, const unsigned char *clear, Py_ssize_t clear_len,
                              const unsigned char *plain, Py_ssize_t plain_len,
                              unsigned char *out) {
    unsigned char counter[4];
    store_be32(counter, c->nonce++);
    memcpy(out, clear, (size_t)clear_len);
    if (aead_seal(c, clear, clear_len, plain, plain_len, counter, out + clear_len) < 0) return -1;
    memcpy(out + clear_len + plain_len + TAG, counter, 4);
    return clear_len + plain_len + TAG + SUFFIX;
}

/* --- XChaCha20-Poly1305 for many receivers at once ------------------------------------
 *
 * A relay seals one packet for every receiver, each with its own key and counter, so
 * their HChaCha20 subkeys, ChaCha20 key streams and Poly1305 tags are independent
 * computations of the same shape and length: with AVX-512F they share passes, one
 * receiver per 32-bit lane of a 512-bit vector (HChaCha20: sixteen receivers a pass), one
 * key stream block of one receiver per lane (as many blocks as the payload needs, up to
 * four), one receiver per 64-bit lane for Poly1305 (eight a pass). On an Intel Xeon
 * (bench/seal.c, a 120-byte payload) a receiver's seal took 157 ns among nine receivers
 * and 125 among sixteen, against 396 one at a time and AES-256-GCM's 171; one receiver
 * alone is sealed one at a time, where a pass would cost more. */
#define XCHACHA_LANES 16
#ifdef HAVE_CHACHA_AVX512

static const uint32_t chacha20_sigma[4] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574};

/* The 20 rounds over 16 vectors of 16 lanes: CHACHA20_ROUNDS, whose rotations the
 * compiler makes single AVX-512 instructions, as in chacha20_blocks_avx512. */
typedef uint32_t u32x16 __attribute__((vector_size(64)));

__attribute__((target("avx512f"))) static inline void chacha20_rounds_x16(__m512i x[16]) {
    u32x16 words[16];
    memcpy(words, x, sizeof words);
    CHACHA20_ROUNDS(words);
    memcpy(x, words, sizeof words);
}

/* subkeys[i][j] = word i of HChaCha20(keys[j], counters[j] then 12 zero bytes), for all
 * 16 lanes (unused lanes are zeros, computed and never read). Word-major, as the key
 * stream pass gathers them. */
__attribute__((target("avx512f"))) static void
hchacha20_x16(const uint32_t keys[XCHACHA_LANES][8], const uint32_t counters[XCHACHA_LANES],
              uint32_t subkeys[8][XCHACHA_LANES]) {
    const __m512i rows = _mm512_setr_epi32(0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96,
                                           104, 112, 120);
    __m512i x[16];
    for (int i = 0; i < 4; i++) x[i] = _mm512_set1_epi32((int)chacha20_sigma[i]);
    for (int i = 0; i < 8; i++) x[4 + i] = _mm512_i32gather_epi32(rows, &keys[0][i], 4);
    x[12] = _mm512_loadu_si512(counters);
    x[13] = x[14] = x[15] = _mm512_setzero_si512();
    chacha20_rounds_x16(x);
    static const int words[8] = {0, 1, 2, 3, 12, 13, 14, 15};
    for (int i = 0; i < 8; i++) _mm512_storeu_si512(subkeys[i], x[words[i]]);
}

/* Key stream blocks 0 to blocks - 1 of receivers 0 to n - 1 (blocks <= 4), receiver r's
 * into streams[r]: lane l of a pass is block l % blocks of receiver l / blocks. */
__attribute__((target("avx512f"))) static void
chacha20_blocks_lanes(const uint32_t subkeys[8][XCHACHA_LANES], int n, int blocks,
                      unsigned char streams[XCHACHA_LANES][256]) {
    __m512i in[16], x[16];
    uint32_t words[16][XCHACHA_LANES];
    for (int i = 0; i < 4; i++) in[i] = _mm512_set1_epi32((int)chacha20_sigma[i]);
    in[13] = in[14] = in[15] = _mm512_setzero_si512();
    for (int first = 0; first < n * blocks; first += XCHACHA_LANES) {
        uint32_t receiver[XCHACHA_LANES], block[XCHACHA_LANES];
        for (int l = 0; l < XCHACHA_LANES; l++) {
            int pair = first + l < n * blocks ? first + l : first; /* spare lanes: a copy */
            receiver[l] = (uint32_t)(pair / blocks);
            block[l] = (uint32_t)(pair % blocks);
        }
        __m512i which = _mm512_loadu_si512(receiver);
        for (int i = 0; i < 8; i++) in[4 + i] = _mm512_i32gather_epi32(which, subkeys[i], 4);
        in[12] = _mm512_loadu_si512(block);
        memcpy(x, in, sizeof x);
        chacha20_rounds_x16(x);
        for (int i = 0; i < 16; i++) _mm512_storeu_si512(words[i], _mm512_add_epi32(x[i], in[i]));
        for (int l = 0; l < XCHACHA_LANES && first + l < n * blocks; l++) {
            uint32_t out[16]; /* little-endian words: x86-64 */
            for (int i = 0; i < 16; i++) out[i] = words[i][l];
            memcpy(streams[receiver[l]] + 64 * block[l], out, sizeof out);
        }
    }
}

/* Poly1305 in five limbs of 26 bits (the 32-bit "donna" layout), a lane per message:
 * AVX-512F multiplies 32 by 32 bits into 64, eight lanes an instruction. */
#define M26 0x3ffffffu

__attribute__((target("avx512f"))) static inline void
poly1305_x8_block(__m512i h[5], const __m512i r[5], const __m512i s[5], const __m512i t[5]) {
#define MUL(a, b) _mm512_mul_epu32(a, b)
#define ADD(a, b) _mm512_add_epi64(a, b)
    const __m512i mask = _mm512_set1_epi64(M26);
    for (int i = 0; i < 5; i++) h[i] = ADD(h[i], t[i]);
    __m512i d[5] = {
        ADD(ADD(ADD(MUL(h[0], r[0]), MUL(h[1], s[4])), ADD(MUL(h[2], s[3]), MUL(h[3], s[2]))),
            MUL(h[4], s[1])),
        ADD(ADD(ADD(MUL(h[0], r[1]), MUL(h[1], r[0])), ADD(MUL(h[2], s[4]), MUL(h[3], s[3]))),
            MUL(h[4], s[2])),
        ADD(ADD(ADD(MUL(h[0], r[2]), MUL(h[1], r[1])), ADD(MUL(h[2], r[0]), MUL(h[3], s[4]))),
            MUL(h[4], s[3])),
        ADD(ADD(ADD(MUL(h[0], r[3]), MUL(h[1], r[2])), ADD(MUL(h[2], r[1]), MUL(h[3], r[0]))),
            MUL(h[4], s[4])),
        ADD(ADD(ADD(MUL(h[0], r[4]), MUL(h[1], r[3])), ADD(MUL(h[2], r[2]), MUL(h[3], r[1]))),
            MUL(h[4], r[0])),
    };
    __m512i c = _mm512_setzero_si512();
    for (int i = 0; i < 5; i++) {
        d[i] = ADD(d[i], c);
        c = _mm512_srli_epi64(d[i], 26);
        h[i] = _mm512_and_si512(d[i], mask);
    }
    h[0] = ADD(h[0], ADD(_mm512_slli_epi64(c, 2), c)); /* 2^130 = 5 mod p */
    c = _mm512_srli_epi64(h[0], 26);
    h[0] = _mm512_and_si512(h[0], mask);
    h[1] = ADD(h[1], c);
#undef MUL
#undef ADD
}

/* The limbs of 16-byte blocks, their low and high 8 bytes in `low` and `high` (a block
 * shorter than 16 bytes already padded with zeros), with the 2^128 bit every block of the
 * AEAD's padded construction has. */
__attribute__((target("avx512f"))) static inline void
poly1305_x8_limbs(__m512i low, __m512i high, __m512i t[5]) {
    const __m512i mask = _mm512_set1_epi64(M26);
    t[0] = _mm512_and_si512(low, mask);
    t[1] = _mm512_and_si512(_mm512_srli_epi64(low, 26), mask);
    t[2] = _mm512_and_si512(_mm512_or_si512(_mm512_srli_epi64(low, 52),
                                            _mm512_slli_epi64(high, 12)), mask);
    t[3] = _mm512_and_si512(_mm512_srli_epi64(high, 14), mask);
    t[4] = _mm512_or_si512(_mm512_srli_epi64(high, 40), _mm512_set1_epi64(1 << 24));
}

/* The same bytes for every lane: the AAD, and the lengths block. */
__attribute__((target("avx512f"))) static inline void
poly1305_x8_shared(__m512i h[5], const __m512i r[5], const __m512i s[5],
                   const unsigned char *m, Py_ssize_t len) {
    for (; len > 0; m += 16, len -= 16) {
        unsigned char block[16] = {0};
        memcpy(block, m, (size_t)(len < 16 ? len : 16));
        __m512i t[5];
        poly1305_x8_limbs(_mm512_set1_epi64((long long)le64(block)),
                          _mm512_set1_epi64((long long)le64(block + 8)), t);
        poly1305_x8_block(h, r, s, t);
    }
}

/* The ChaCha20-Poly1305 tag of `aad` and each of n (<= 8) ciphertexts of `len` bytes,
 * the j-th at messages + j * stride under the Poly1305 key keys[j], written right after
 * its ciphertext: chacha20_poly1305_tag eight at a time. Reads up to 15 bytes past a
 * ciphertext's end (where its tag goes), and none of them count. */
__attribute__((target("avx512f"))) static void
chacha20_poly1305_tags_x8(const unsigned char (*keys)[32], int n, const unsigned char *aad,
                          Py_ssize_t aad_len, unsigned char *messages, Py_ssize_t stride,
                          Py_ssize_t len) {
    uint64_t limbs[5][8] = {{0}};
    for (int j = 0; j < n; j++) {
        const unsigned char *key = keys[j];
        limbs[0][j] = le32(key) & 0x3ffffff;
        limbs[1][j] = (le32(key + 3) >> 2) & 0x3ffff03;
        limbs[2][j] = (le32(key + 6) >> 4) & 0x3ffc0ff;
        limbs[3][j] = (le32(key + 9) >> 6) & 0x3f03fff;
        limbs[4][j] = (le32(key + 12) >> 8) & 0x00fffff;
    }
    __m512i h[5], r[5], s[5], t[5];
    for (int i = 0; i < 5; i++) {
        h[i] = _mm512_setzero_si512();
        r[i] = _mm512_loadu_si512(limbs[i]);
        s[i] = _mm512_add_epi64(_mm512_slli_epi64(r[i], 2), r[i]); /* 5r */
    }
    poly1305_x8_shared(h, r, s, aad, aad_len);
    /* Lanes past n read the first message again: computed, never written. */
    long long at[8];
    for (int j = 0; j < 8; j++) at[j] = (long long)(j < n ? j : 0) * (long long)stride;
    const __m512i offsets = _mm512_loadu_si512(at);
    for (Py_ssize_t done = 0; done < len; done += 16) {
        const unsigned char *base = messages + done;
        __m512i low = _mm512_i64gather_epi64(offsets, base, 1);
        __m512i high = _mm512_i64gather_epi64(offsets, base + 8, 1);
        Py_ssize_t left = len - done;
        if (left < 16) { /* zeros pad the last block */
            uint64_t keep_low = left >= 8 ? ~UINT64_C(0) : (UINT64_C(1) << (8 * left)) - 1;
            uint64_t keep_high = left <= 8 ? 0 : (UINT64_C(1) << (8 * (left - 8))) - 1;
            low = _mm512_and_si512(low, _mm512_set1_epi64((long long)keep_low));
            high = _mm512_and_si512(high, _mm512_set1_epi64((long long)keep_high));
        }
        poly1305_x8_limbs(low, high, t);
        poly1305_x8_block(h, r, s, t);
    }
    unsigned char lengths[16];
    store32(lengths, (uint32_t)aad_len);
    store32(lengths + 4, (uint32_t)((uint64_t)aad_len >> 32));
    store32(lengths + 8, (uint32_t)len);
    store32(lengths + 12, (uint32_t)((uint64_t)len >> 32));
    poly1305_x8_shared(h, r, s, lengths, 16);
    for (int i = 0; i < 5; i++) _mm512_storeu_si512(limbs[i], h[i]);
    for (int j = 0; j < n; j++) {
        /* Fully reduced, then + s mod 2^128: poly1305_finish in 26-bit limbs. */
        uint32_t h0 = (uint32_t)limbs[0][j], h1 = (uint32_t)limbs[1][j],
                 h2 = (uint32_t)limbs[2][j], h3 = (uint32_t)limbs[3][j],
                 h4 = (uint32_t)limbs[4][j], c;
        c = h1 >> 26; h1 &= M26;
        h2 += c; c = h2 >> 26; h2 &= M26;
        h3 += c; c = h3 >> 26; h3 &= M26;
        h4 += c; c = h4 >> 26; h4 &= M26;
        h0 += c * 5; c = h0 >> 26; h0 &= M26;
        h1 += c;
        uint32_t g0 = h0 + 5; c = g0 >> 26; g0 &= M26;
        uint32_t g1 = h1 + c; c = g1 >> 26; g1 &= M26;
        uint32_t g2 = h2 + c; c = g2 >> 26; g2 &= M26;
        uint32_t g3 = h3 + c; c = g3 >> 26; g3 &= M26;
        uint32_t g4 = h4 + c - (1u << 26);
        uint32_t keep = (g4 >> 31) - 1; /* all ones when h >= p */
        h0 = (h0 & ~keep) | (g0 & keep);
        h1 = (h1 & ~keep) | (g1 & keep);
        h2 = (h2 & ~keep) | (g2 & keep);
        h3 = (h3 & ~keep) | (g3 & keep);
        h4 = (h4 & ~keep) | (g4 & keep);
        uint32_t w0 = h0 | (h1 << 26), w1 = (h1 >> 6) | (h2 << 20);
        uint32_t w2 = (h2 >> 12) | (h3 << 14), w3 = (h3 >> 18) | (h4 << 8);
        const unsigned char *pad = keys[j] + 16;
        unsigned char *tag = messages + j * stride + len;
        uint64_t f = (uint64_t)w0 + le32(pad);
        store32(tag, (uint32_t)f);
        f = (uint64_t)w1 + le32(pad + 4) + (f >> 32);
        store32(tag + 4, (uint32_t)f);
        f = (uint64_t)w2 + le32(pad + 8) + (f >> 32);
        store32(tag + 8, (uint32_t)f);
        f = (uint64_t)w3 + le32(pad + 12) + (f >> 32);
        store32(tag + 12, (uint32_t)f);
    }
}

/* Whether the Relay seals XChaCha20 for many receivers at once: with the AVX-512 key
 * stream (chosen at import, and by _chacha20). */
static int xchacha_wide(void) { return chacha20_blocks == chacha20_blocks_avx512; }

/* seal_packet for each of n (<= 16) XChaCha20 Ciphers, the j-th datagram at
 * out + j * stride (each clear_len + plain_len + TAG + SUFFIX bytes). */
static void xchacha_seal_many(CipherObject *const *ciphers, int n, const unsigned char *clear,
                              Py_ssize_t clear_len, const unsigned char *plain,
                              Py_ssize_t plain_len, unsigned char *out, Py_ssize_t stride) {
    uint32_t keys[XCHACHA_LANES][8] = {{0}}, counters[XCHACHA_LANES] = {0};
    uint32_t subkeys[8][XCHACHA_LANES];
    unsigned char streams[XCHACHA_LANES][256], poly_keys[XCHACHA_LANES][32];
    for (int j = 0; j < n; j++) {
        CipherObject *c = ciphers[j];
        unsigned char *suffix = out + j * stride + clear_len + plain_len + TAG;
        store_be32(suffix, c->nonce++);
        counters[j] = le32(suffix); /* HChaCha20's nonce word 0: the counter's bytes */
        for (int i = 0; i < 8; i++) keys[j][i] = le32(c->key + 4 * i);
    }
    hchacha20_x16((const uint32_t(*)[8])keys, counters, subkeys);
    /* Block 0 keys Poly1305; blocks 1-3 cover 192 bytes, and chacha20_xor goes on past. */
    int blocks = 1 + (int)((plain_len + 63) / 64);
    chacha20_blocks_lanes((const uint32_t(*)[XCHACHA_LANES])subkeys, n, blocks < 4 ? blocks : 4,
                          streams);
    for (int j = 0; j < n; j++) {
        uint32_t key[8];
        for (int i = 0; i < 8; i++) key[i] = subkeys[i][j];
        memcpy(out + j * stride, clear, (size_t)clear_len);
        memcpy(poly_keys[j], streams[j], 32);
        chacha20_xor(key, streams[j], plain, plain_len, out + j * stride + clear_len);
    }
    for (int first = 0; first < n; first += 8) {
        int lanes = n - first < 8 ? n - first : 8;
        if (lanes > 2) {
            chacha20_poly1305_tags_x8((const unsigned char(*)[32])poly_keys + first, lanes,
                                      clear, clear_len, out + first * stride + clear_len,
                                      stride, plain_len);
            continue;
        }
        /* A pass costs what three tags one at a time do: one or two are done so. */
        for (int j = first; j < n; j++) {
            unsigned char *sealed = out + j * stride + clear_len;
            chacha20_poly1305_tag(poly_keys[j], clear, clear_len, sealed, plain_len,
                                  sealed + plain_len);
        }
    }
    /* Only the copies of the members' keys are wiped: a subkey, a key stream or a Poly1305
     * key serves the one counter it was made for, which no packet uses again. */
    OPENSSL_cleanse(keys, sizeof keys);
}
#else
static int xchacha_wide(void) { return 0; }

static void xchacha_seal_many(CipherObject *const *ciphers, int n, const unsigned char *clear,
                              Py_ssize_t clear_len, const unsigned char *plain,
                              Py_ssize_t plain_len, unsigned char *out, Py_ssize_t stride) {
    for (int j = 0; j < n; j++)
        seal_packet(ciphers[j], clear, clear_len, plain, plain_len, out + j * stride);
}
#endif

static PyObject *Cipher_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    CipherObject *self = (CipherObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->kind = -1;
    self->seal_ctx = EVP_CIPHER_CTX_new();
    self->open_ctx = EVP_CIPHER_CTX_new();
    if (self->seal_ctx == NULL || self->open_ctx == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void Cipher_dealloc(CipherObject *self) {
    /* Instances are of Python subclasses (heap types with a __dict__): subtype_dealloc has
     * untracked them and drops the type's reference itself. */
    EVP_CIPHER_CTX_free(self->seal_ctx);
    EVP_CIPHER_CTX_free(self->open_ctx);
    OPENSSL_cleanse(self->key, sizeof self->key);
#ifdef HAVE_AES_GCM_X86
    OPENSSL_cleanse(&self->gcm, sizeof self->gcm);
#endif
    Py_CLEAR(self->address);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Cipher_native_setup(CipherObject *self, PyObject *args) {
    int kind;
    Py_buffer key;
    if (!PyArg_ParseTuple(args, "iy*", &kind, &key)) return NULL;
    if (key.len != 32 || (kind != KIND_AES && kind != KIND_XCHACHA)) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "a 32-byte key and kind 0 (AES-GCM) or 1 (XChaCha)");
        return NULL;
    }
    memcpy(self->key, key.buf, 32);
    PyBuffer_Release(&key);
    const EVP_CIPHER *cipher = kind == KIND_AES ? EVP_aes_256_gcm() : EVP_chacha20_poly1305();
    const unsigned char *init_key = kind == KIND_AES ? self->key : NULL;
    if (EVP_EncryptInit_ex(self->seal_ctx, cipher, NULL, init_key, NULL) != 1 ||
        EVP_DecryptInit_ex(self->open_ctx, cipher, NULL, init_key, NULL) != 1) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused the cipher");
        return NULL;
    }
#ifdef HAVE_AES_GCM_X86
    self->x86 = kind == KIND_AES && aes_gcm_x86;
    if (self->x86) aes_gcm_setup(&self->gcm, self->key);
#endif
    self->kind = kind;
    Py_RETURN_NONE;
}

static int cipher_ready(CipherObject *self) {
    if (self->kind < 0) {
        PyErr_SetString(PyExc_RuntimeError, "Cipher used before _native_setup");
        return 0;
    }
    return 1;
}

static PyObject *Cipher_seal_split(CipherObject *self, PyObject *args) {
    Py_buffer clear, plain;
    if (!cipher_ready(self) || !PyArg_ParseTuple(args, "y*y*", &clear, &plain)) return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, clear.len + plain.len + TAG + SUFFIX);
    if (out != NULL &&
        seal_packet(self, clear.buf, clear.len, plain.buf, plain.len,
                    (unsigned char *)PyBytes_AS_STRING(out)) < 0) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to seal");
    }
    PyBuffer_Release(&clear);
    PyBuffer_Release(&plain);
    return out;
}

static PyObject *Cipher_open_split(CipherObject *self, PyObject *args) {
    Py_buffer packet;
    if (!cipher_ready(self) || !PyArg_ParseTuple(args, "y*", &packet)) return NULL;
    const unsigned char *p = packet.buf;
    Py_ssize_t len = packet.len, clear = clear_size(p, len), plain_len = 0;
    PyObject *result = NULL, *plain = NULL;
    if (clear < 0) {
        PyErr_SetString(PacketError,
                        len < 12 || (p[0] >> 6) != 2 ? "not an RTP packet"
                                                      : "RTP packet shorter than its header");
        goto done;
    }
    if (len - clear < TAG + SUFFIX) {
        PyErr_SetString(DecryptionError, "packet shorter than tag and nonce");
        goto done;
    }
    plain = PyBytes_FromStringAndSize(NULL, len - clear - SUFFIX - TAG);
    if (plain == NULL) goto done;
    int status = open_packet(self, p, len, &clear, (unsigned char *)PyBytes_AS_STRING(plain),
                             &plain_len);
    if (status == NOT_AUTHENTIC) {
        PyErr_SetString(DecryptionError, self->kind == KIND_AES
                                             ? "AES-GCM authentication failed"
                                             : "XChaCha20-Poly1305 authentication failed");
    } else if (status == MALFORMED) {
        PyErr_SetString(PacketError, "extension body longer than the plaintext");
    } else {
        result = Py_BuildValue("(y#O)", p, clear, plain);
    }
done:
    Py_XDECREF(plain);
    PyBuffer_Release(&packet);
    return result;
}

static PyObject *Cipher_get_nonce(CipherObject *self, void *closure) {
    return PyLong_FromUnsignedLong(self->nonce);
}

static int Cipher_set_nonce(CipherObject *self, PyObject *value, void *closure) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "the nonce cannot be deleted");
        return -1;
    }
    unsigned long nonce = PyLong_AsUnsignedLongMask(value);
    if (nonce == (unsigned long)-1 && PyErr_Occurred()) return -1;
    self->nonce = (uint32_t)nonce;
    return 0;
}

static PyMethodDef Cipher_methods[] = {
    {"_native_setup", (PyCFunction)Cipher_native_setup, METH_VARARGS,
     "_native_setup(kind, secret_key): 0 for AES-256-GCM, 1 for XChaCha20-Poly1305."},
    {"seal_split", (PyCFunction)Cipher_seal_split, METH_VARARGS,
     "TransportCipher.seal_split: clear + ciphertext + tag + counter; advances the nonce."},
    {"open_split", (PyCFunction)Cipher_open_split, METH_VARARGS,
     "TransportCipher.open_split: (clear, plaintext); raises DecryptionError, PacketError."},
    {NULL}};

static PyGetSetDef Cipher_getset[] = {
    {"nonce", (getter)Cipher_get_nonce, (setter)Cipher_set_nonce,
     "The next nonce counter (wraps at 2**32).", NULL},
    {NULL}};

static PyTypeObject CipherType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "voxgate._fastpath.Cipher",
    .tp_basicsize = sizeof(CipherObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Seal and open state of one rtpsize AEAD session (a TransportCipher's base).",
    .tp_new = Cipher_new,
    .tp_dealloc = (destructor)Cipher_dealloc,
    .tp_methods = Cipher_methods,
    .tp_getset = Cipher_getset,
};

/* The cached sockaddr of `address` (a (host, port) tuple); 0, or -1 when it is not IPv4. */
static int cipher_sockaddr(CipherObject *c, PyObject *address) {
    if (c->address == address) return 0;
    if (!PyTuple_Check(address) || PyTuple_GET_SIZE(address) != 2) return -1;
    PyObject *host = PyTuple_GET_ITEM(address, 0), *port = PyTuple_GET_ITEM(address, 1);
    if (!PyUnicode_Check(host) || !PyLong_Check(port)) return -1;
    const char *text = PyUnicode_AsUTF8(host);
    long number = PyLong_AsLong(port);
    if (text == NULL || number < 0 || number > 65535) {
        PyErr_Clear();
        return -1;
    }
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)number)};
    if (inet_pton(AF_INET, text, &sin.sin_addr) != 1) return -1;
    c->sockaddr = sin;
    Py_INCREF(address);
    Py_XSETREF(c->address, address);
    return 0;
}

/* --- ReplayWindow ------------------------------------------------------------------------ */

#define WINDOW_WORDS 16

typedef struct {
    PyObject_HEAD
    int size;
    int started;
    uint32_t highest;
    uint64_t bits[WINDOW_WORDS]; /* bit i set: counter (highest - i) seen */
} ReplayObject;

static PyTypeObject ReplayType;

static int Replay_init(ReplayObject *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"size", NULL};
    int size = 1024;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|i", names, &size)) return -1;
    if (size < 1 || size > 64 * WINDOW_WORDS) {
        PyErr_SetString(PyExc_ValueError, "size must be 1..1024");
        return -1;
    }
    self->size = size;
    self->started = 0;
    memset(self->bits, 0, sizeof self->bits);
    return 0;
}

static int bit_of(const ReplayObject *w, uint32_t i) {
    return (int)((w->bits[i / 64] >> (i % 64)) & 1);
}

/* guard.ReplayWindow.accept without recording: whether `counter` would be accepted. */
static int replay_new(const ReplayObject *w, uint32_t counter) {
    if (!w->started) return 1;
    uint32_t ahead = counter - w->highest;
    if (ahead && ahead < 0x80000000u) return 1;
    uint32_t behind = w->highest - counter;
    return behind < (uint32_t)w->size && !bit_of(w, behind);
}

/* guard.ReplayWindow.accept. */
static int replay_accept(ReplayObject *w, uint32_t counter) {
    if (!w->started) {
        w->started = 1;
        w->highest = counter;
        memset(w->bits, 0, sizeof w->bits);
        w->bits[0] = 1;
        return 1;
    }
    uint32_t ahead = counter - w->highest;
    if (ahead && ahead < 0x80000000u) {
        if (ahead >= (uint32_t)w->size) {
            memset(w->bits, 0, sizeof w->bits);
        } else {
            int words = (int)(ahead / 64), shift = (int)(ahead % 64);
            for (int i = WINDOW_WORDS - 1; i >= 0; i--) {
                int from = i - words;
                uint64_t v = from >= 0 ? w->bits[from] << shift : 0;
                if (shift && from - 1 >= 0) v |= w->bits[from - 1] >> (64 - shift);
                w->bits[i] = v;
            }
            /* Keep `size` bits, as the Python window masks with (1 << size) - 1. */
            for (int i = 0; i < WINDOW_WORDS; i++) {
                int low = 64 * i;
                if (low >= w->size) w->bits[i] = 0;
                else if (w->size - low < 64) w->bits[i] &= (UINT64_C(1) << (w->size - low)) - 1;
            }
        }
        w->bits[0] |= 1;
        w->highest = counter;
        return 1;
    }
    uint32_t behind = w->highest - counter;
    if (behind >= (uint32_t)w->size || bit_of(w, behind)) return 0;
    w->bits[behind / 64] |= UINT64_C(1) << (behind % 64);
    return 1;
}

static PyObject *Replay_accept(ReplayObject *self, PyObject *arg) {
    unsigned long counter = PyLong_AsUnsignedLongMask(arg);
    if (counter == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    return PyBool_FromLong(replay_accept(self, (uint32_t)counter));
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static PyObject *Replay_accept_packet(ReplayObject *self, PyObject *arg) {
    Py_buffer packet;
    if (PyObject_GetBuffer(arg, &packet, PyBUF_SIMPLE) < 0) return NULL;
    uint32_t counter = 0;
    /* _nonce_suffix: int.from_bytes(packet[-4:]) of a shorter packet reads what is there. */
    const unsigned char *p = packet.buf;
    Py_ssize_t from = packet.len > 4 ? packet.len - 4 : 0;
    for (Py_ssize_t i = from; i < packet.len; i++) counter = counter << 8 | p[i];
    PyBuffer_Release(&packet);
    return PyBool_FromLong(replay_accept(self, counter));
}

static PyMethodDef Replay_methods[] = {
    {"accept", (PyCFunction)Replay_accept, METH_O, "guard.ReplayWindow.accept"},
    {"accept_packet", (PyCFunction)Replay_accept_packet, METH_O,
     "guard.ReplayWindow.accept_packet, over the 4-byte nonce suffix"},
    {NULL}};

static PyMemberDef Replay_members[] = {
    {"size", T_INT, offsetof(ReplayObject, size), READONLY, "counters behind the newest kept"},
    {NULL}};

static PyTypeObject ReplayType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "voxgate._fastpath.ReplayWindow",
    .tp_basicsize = sizeof(ReplayObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "guard.ReplayWindow over the 32-bit nonce suffix of the rtpsize modes.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Replay_init,
    .tp_methods = Replay_methods,
    .tp_members = Replay_members,
};

/* --- RateLimit ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    double rate, burst, tokens, last;
} RateObject;

static PyTypeObject RateType;

static int Rate_init(RateObject *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"rate", "burst", "now", "tokens", NULL};
    PyObject *tokens = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ddd|O", names, &self->rate, &self->burst,
                                     &self->last, &tokens))
        return -1;
    self->tokens = tokens == Py_None ? self->burst : PyFloat_AsDouble(tokens);
    return PyErr_Occurred() ? -1 : 0;
}

/* guard.RateLimit.allow, its arithmetic in its order. */
static int rate_allow(RateObject *r, double now) {
    double tokens = r->tokens + (now - r->last) * r->rate;
    r->last = now;
    if (tokens >= 1.0) {
        r->tokens = (tokens < r->burst ? tokens : r->burst) - 1.0;
        return 1;
    }
    r->tokens = tokens < r->burst ? tokens : r->burst;
    return 0;
}

static int rate_would_allow(const RateObject *r, double now) {
    return r->tokens + (now - r->last) * r->rate >= 1.0;
}

static PyObject *Rate_allow(RateObject *self, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    return PyBool_FromLong(rate_allow(self, now));
}

static PyMethodDef Rate_methods[] = {
    {"allow", (PyCFunction)Rate_allow, METH_O, "guard.RateLimit.allow"}, {NULL}};

static PyMemberDef Rate_members[] = {
    {"rate", T_DOUBLE, offsetof(RateObject, rate), 0, "packets a second"},
    {"burst", T_DOUBLE, offsetof(RateObject, burst), 0, "largest burst"},
    {"_tokens", T_DOUBLE, offsetof(RateObject, tokens), 0, NULL},
    {"_last", T_DOUBLE, offsetof(RateObject, last), 0, NULL},
    {NULL}};

static PyTypeObject RateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "voxgate._fastpath.RateLimit",
    .tp_basicsize = sizeof(RateObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "guard.RateLimit: a token bucket.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Rate_init,
    .tp_methods = Rate_methods,
    .tp_members = Rate_members,
};

/* --- Relay ------------------------------------------------------------------------------- */

/* What one sender's packets take, as Router.forward and media.py would find it from the
 * Python objects: read from them once, then reused packet after packet until the router's
 * `generation` changes (Router.routes_changed: a join, a leave, a description, a move, a
 * mute, a change of the channel's forward). Holds a reference to every object it names. */
typedef struct {
    uint32_t ssrc;
    int relayable;            /* 0: every packet of this sender is Python's */
    PyObject *sender;         /* the VoiceSession */
    CipherObject *cipher;     /* its Cipher (with the address it sends from) */
    ReplayObject *replay;
    RateObject *rate;
    int count;                /* receivers */
    CipherObject **receivers; /* their Ciphers, each with the address it is sent to */
    PyObject **sessions;      /* their VoiceSessions, for packets_out */
    unsigned long long pending_in; /* forwarded since the counters were last added */
    double last_at;
} route_t;

typedef struct {
    CipherObject *cipher;
    PyObject *session; /* borrowed: a route holds it */
} sealed_t;

typedef struct {
    PyObject_HEAD
    int fd;
    PyObject *router;   /* Router: by_ssrc, generation */
    PyObject *by_ssrc;  /* Router.by_ssrc: ssrc -> VoiceSession */
    PyObject *stats;    /* NodeStats */
    PyObject *forward;  /* the function Router.forward: a channel whose forward is it */
    long long generation; /* of the routes held; -1: none held */
    double members_added_at; /* when the members' counters were last added */
    route_t **table;    /* open addressing by ssrc, `capacity` a power of two */
    Py_ssize_t capacity, used;
    route_t **touched;  /* routes that forwarded this pump, their counters to add */
    Py_ssize_t touched_count, touched_capacity;
    sealed_t *sealed;   /* receivers sealed for this pump, their packets_out to add */
    Py_ssize_t sealed_count, sealed_capacity;
    unsigned char *recv_buffers;
    struct iovec recv_iov[BATCH];
    struct sockaddr_in recv_from[BATCH];
    struct mmsghdr recv_msgs[BATCH];
    unsigned char *arena;
    Py_ssize_t arena_used;
    int out_count;
    struct iovec out_iov[MAX_OUT];
    struct sockaddr_in out_to[MAX_OUT];
    struct mmsghdr out_msgs[MAX_OUT];
    unsigned char plain[RECV_SIZE];
    unsigned long long packets_in, bytes_in, packets_out, bytes_out, send_errors;
    Py_ssize_t read; /* datagrams the last pump read */
    int timer_fd, timer_open; /* the poll timer (arm, timer_fd) */
} RelayObject;

static PyTypeObject RelayType;

static void route_free(route_t *route) {
    for (int i = 0; i < route->count; i++) {
        Py_DECREF(route->receivers[i]);
        Py_DECREF(route->sessions[i]);
    }
    PyMem_Free(route->receivers);
    PyMem_Free(route->sessions);
    Py_XDECREF(route->sender);
    Py_XDECREF(route->cipher);
    Py_XDECREF(route->replay);
    Py_XDECREF(route->rate);
    PyMem_Free(route);
}

/* Every route dropped: they are read again from the Python objects as packets come. */
static void forget_routes(RelayObject *self) {
    for (Py_ssize_t i = 0; i < self->capacity; i++) {
        if (self->table[i] != NULL) {
            route_free(self->table[i]);
            self->table[i] = NULL;
        }
    }
    self->used = 0;
    self->generation = -1;
}

static Py_ssize_t slot_of(const RelayObject *self, uint32_t ssrc) {
    Py_ssize_t mask = self->capacity - 1, i = (Py_ssize_t)((ssrc * 2654435761u) & (uint32_t)mask);
    while (self->table[i] != NULL && self->table[i]->ssrc != ssrc) i = (i + 1) & mask;
    return i;
}

static int table_insert(RelayObject *self, route_t *route) {
    if (2 * (self->used + 1) > self->capacity) {
        Py_ssize_t old_capacity = self->capacity, capacity = old_capacity ? 2 * old_capacity : 64;
        route_t **old = self->table, **table = PyMem_Calloc((size_t)capacity, sizeof *table);
        if (table == NULL) return -1;
        self->table = table;
        self->capacity = capacity;
        for (Py_ssize_t i = 0; i < old_capacity; i++)
            if (old[i] != NULL) self->table[slot_of(self, old[i]->ssrc)] = old[i];
        PyMem_Free(old);
    }
    self->table[slot_of(self, route->ssrc)] = route;
    self->used++;
    return 0;
}

static int grow(void **array, Py_ssize_t *capacity, Py_ssize_t wanted, size_t item) {
    if (wanted <= *capacity) return 0;
    Py_ssize_t more = *capacity ? *capacity : 64;
    while (more < wanted) more *= 2;
    void *bigger = PyMem_Realloc(*array, (size_t)more * item);
    if (bigger == NULL) return -1;
    *array = bigger;
    *capacity = more;
    return 0;
}

static int Relay_init(RelayObject *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"fd", "router", "stats", "forward", NULL};
    PyObject *router, *stats, *forward;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOOO", names, &self->fd, &router, &stats,
                                     &forward))
        return -1;
    PyObject *by_ssrc = PyObject_GetAttrString(router, "by_ssrc");
    if (by_ssrc == NULL) return -1;
    if (!PyDict_Check(by_ssrc)) {
        Py_DECREF(by_ssrc);
        PyErr_SetString(PyExc_TypeError, "router.by_ssrc must be a dict");
        return -1;
    }
    Py_XSETREF(self->by_ssrc, by_ssrc);
    Py_INCREF(router);
    Py_XSETREF(self->router, router);
    Py_INCREF(stats);
    Py_XSETREF(self->stats, stats);
    Py_INCREF(forward);
    Py_XSETREF(self->forward, forward);
    if (self->table != NULL) forget_routes(self);
    self->generation = -1;
    if (self->recv_buffers == NULL) self->recv_buffers = PyMem_Malloc((size_t)BATCH * RECV_SIZE);
    if (self->arena == NULL) self->arena = PyMem_Malloc(ARENA);
    if (self->recv_buffers == NULL || self->arena == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < BATCH; i++) {
        self->recv_iov[i].iov_base = self->recv_buffers + (size_t)i * RECV_SIZE;
        self->recv_iov[i].iov_len = RECV_SIZE;
    }
    if (!self->timer_open) {
        self->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (self->timer_fd < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        self->timer_open = 1;
    }
    return 0;
}

static void Relay_dealloc(RelayObject *self) {
    forget_routes(self);
    PyMem_Free(self->table);
    PyMem_Free(self->touched);
    PyMem_Free(self->sealed);
    Py_CLEAR(self->router);
    Py_CLEAR(self->by_ssrc);
    Py_CLEAR(self->stats);
    Py_CLEAR(self->forward);
    PyMem_Free(self->recv_buffers);
    PyMem_Free(self->arena);
    if (self->timer_open) close(self->timer_fd);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* sendmmsg everything sealed so far, looping over partial sends; failures are counted. */
static void flush(RelayObject *self) {
    int sent = 0;
    while (sent < self->out_count) {
        int n = sendmmsg(self->fd, self->out_msgs + sent, (unsigned)(self->out_count - sent), 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                /* Socket buffer full: the Python transport would queue, here they are lost. */
                self->send_errors += (unsigned long long)(self->out_count - sent);
                break;
            }
            self->send_errors++; /* this one datagram fails (an ICMP error pending): skip it */
            sent++;
            continue;
        }
        sent += n;
    }
    self->out_count = 0;
    self->arena_used = 0;
}

static double monotonic_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A new reference to obj.name, or NULL (error cleared) when it has none. */
static PyObject *attr(PyObject *obj, PyObject *name) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) PyErr_Clear();
    return value;
}

static int bump(PyObject *obj, PyObject *name, unsigned long long delta) {
    if (!delta) return 0;
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) return -1;
    PyObject *more = PyLong_FromUnsignedLongLong(delta);
    PyObject *sum = more ? PyNumber_Add(value, more) : NULL;
    Py_DECREF(value);
    Py_XDECREF(more);
    if (sum == NULL) return -1;
    int status = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return status;
}

/* The route of `sender` (ssrc `ssrc`) as Router.forward would take it now: relayable when
 * it has a Cipher here, a replay window and token bucket of ours, an address, is not
 * muted, its channel forwards through Router.forward, and every receiver (every other
 * member with a cipher and an address) has a Cipher here. NULL on an error (set). */
static route_t *read_route(RelayObject *self, uint32_t ssrc, PyObject *sender) {
    route_t *route = PyMem_Calloc(1, sizeof *route);
    if (route == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    route->ssrc = ssrc;
    Py_INCREF(sender);
    route->sender = sender;
    PyObject *cipher = NULL, *replay = NULL, *rate = NULL, *muted = NULL, *channel = NULL,
             *forward = NULL, *address = NULL, *members = NULL;
    cipher = attr(sender, s_cipher);
    replay = attr(sender, s_replay);
    rate = attr(sender, s_rate);
    if (cipher == NULL || !PyObject_TypeCheck(cipher, &CipherType) ||
        ((CipherObject *)cipher)->kind < 0 || replay == NULL ||
        !PyObject_TypeCheck(replay, &ReplayType) || rate == NULL ||
        !PyObject_TypeCheck(rate, &RateType))
        goto done;
    muted = attr(sender, s_muted);
    if (muted != NULL && PyObject_IsTrue(muted) != 0) { /* server_muted: Python's */
        PyErr_Clear();
        goto done;
    }
    channel = attr(sender, s_channel);
    forward = channel ? attr(channel, s_forward) : NULL;
    /* A channel forwarding through anything but Router.forward (forward_filtered in a DAVE
     * downgrade, or whatever comes next) is Python's. */
    if (forward == NULL || !PyMethod_Check(forward) ||
        PyMethod_GET_FUNCTION(forward) != self->forward)
        goto done;
    address = attr(sender, s_address);
    if (address == NULL || cipher_sockaddr((CipherObject *)cipher, address) < 0) goto done;
    members = attr(channel, s_members);
    if (members == NULL || !PyList_Check(members)) goto done;
    Py_ssize_t size = PyList_GET_SIZE(members);
    if (size > MAX_OUT + 1) goto done;
    route->receivers = PyMem_Calloc((size_t)(size ? size : 1), sizeof *route->receivers);
    route->sessions = PyMem_Calloc((size_t)(size ? size : 1), sizeof *route->sessions);
    if (route->receivers == NULL || route->sessions == NULL) {
        PyErr_NoMemory();
        goto failed;
    }
    /* Router.forward's receivers: every other member with a cipher and an address. All
     * must be ours (one in a legacy mode makes the sender's packets Python's). */
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *member = PyList_GET_ITEM(members, i);
        if (member == sender) continue;
        PyObject *theirs = attr(member, s_cipher);
        if (theirs == NULL || theirs == Py_None) {
            Py_XDECREF(theirs);
            continue;
        }
        PyObject *where = attr(member, s_address);
        if (where == NULL || where == Py_None) { /* skipped, as Router.forward skips it */
            Py_XDECREF(where);
            Py_DECREF(theirs);
            continue;
        }
        int ours = PyObject_TypeCheck(theirs, &CipherType) &&
                   ((CipherObject *)theirs)->kind >= 0 &&
                   cipher_sockaddr((CipherObject *)theirs, where) == 0;
        Py_DECREF(where);
        if (!ours) {
            Py_DECREF(theirs);
            goto done;
        }
        Py_INCREF(member);
        route->sessions[route->count] = member;
        route->receivers[route->count++] = (CipherObject *)theirs; /* owned by the route */
    }
    /* XChaCha20 receivers last, in their order, so that relay_one seals them side by side
     * (xchacha_seal_many); who gets a datagram first within one sendmmsg is no one's. */
    for (int i = 0, moved = 0; i + moved < route->count;) {
        if (route->receivers[i]->kind != KIND_XCHACHA) {
            i++;
            continue;
        }
        CipherObject *cipher_i = route->receivers[i];
        PyObject *session_i = route->sessions[i];
        int last = route->count - 1;
        memmove(route->receivers + i, route->receivers + i + 1,
                (size_t)(last - i) * sizeof *route->receivers);
        memmove(route->sessions + i, route->sessions + i + 1,
                (size_t)(last - i) * sizeof *route->sessions);
        route->receivers[last] = cipher_i;
        route->sessions[last] = session_i;
        moved++;
    }
    route->relayable = 1;
done:
    if (route->relayable) {
        route->cipher = (CipherObject *)cipher;
        route->replay = (ReplayObject *)replay;
        route->rate = (RateObject *)rate;
        cipher = replay = rate = NULL;
    }
    Py_XDECREF(members);
    Py_XDECREF(address);
    Py_XDECREF(forward);
    Py_XDECREF(channel);
    Py_XDECREF(muted);
    Py_XDECREF(rate);
    Py_XDECREF(replay);
    Py_XDECREF(cipher);
    return route;
failed:
    Py_XDECREF(members);
    Py_XDECREF(address);
    Py_XDECREF(forward);
    Py_XDECREF(channel);
    Py_XDECREF(muted);
    Py_XDECREF(rate);
    Py_XDECREF(replay);
    Py_XDECREF(cipher);
    route_free(route);
    return NULL;
}

enum { RELAYED = 0, HAND_BACK = 1, FAILED = -1 };

/* The route of the sender of ssrc `ssrc`, read on its first packet since the routes
 * changed; NULL with no error set when no session has that ssrc. */
static route_t *route_of(RelayObject *self, uint32_t ssrc) {
    if (self->capacity) {
        route_t *known = self->table[slot_of(self, ssrc)];
        if (known != NULL) return known;
    }
    PyObject *key = PyLong_FromUnsignedLong(ssrc);
    if (key == NULL) return NULL;
    PyObject *sender = PyDict_GetItemWithError(self->by_ssrc, key); /* borrowed */
    Py_DECREF(key);
    if (sender == NULL) return NULL; /* unknown ssrcs are not remembered: anyone can send them */
    route_t *route = read_route(self, ssrc, sender);
    if (route == NULL) return NULL;
    if (table_insert(self, route) < 0) {
        route_free(route);
        PyErr_NoMemory();
        return NULL;
    }
    return route;
}

/* A sealed datagram at `out` (in the arena), to go out with the pump's sendmmsg. */
static void queue_datagram(RelayObject *self, CipherObject *receiver, PyObject *session,
                           unsigned char *out, Py_ssize_t size) {
    self->arena_used += size;
    int slot = self->out_count++;
    self->out_to[slot] = receiver->sockaddr;
    self->out_iov[slot].iov_base = out;
    self->out_iov[slot].iov_len = (size_t)size;
    struct msghdr *header = &self->out_msgs[slot].msg_hdr;
    memset(header, 0, sizeof *header);
    header->msg_name = &self->out_to[slot];
    header->msg_namelen = sizeof self->out_to[slot];
    header->msg_iov = &self->out_iov[slot];
    header->msg_iovlen = 1;
    self->packets_out++;
    self->bytes_out += (unsigned long long)size;
    if (!receiver->pending_out) self->sealed[self->sealed_count++] = (sealed_t){receiver, session};
    receiver->pending_out++;
}

/* One datagram: relayed here, or handed back to Python with nothing changed. */
static int relay_one(RelayObject *self, const unsigned char *p, Py_ssize_t len,
                     const struct sockaddr_in *from) {
    /* media.py's first test: RTP, and not RTCP (payload types 200-204). */
    if (len < 12 || (p[0] >> 6) != 2 || (p[1] >= 200 && p[1] <= 204)) return HAND_BACK;
    route_t *route = route_of(self, be32(p + 8));
    if (route == NULL) return PyErr_Occurred() ? FAILED : HAND_BACK;
    if (!route->relayable) return HAND_BACK;
    CipherObject *own = route->cipher;
    /* A sender seen at another address is moved by Python (Router.move), then relayed. */
    if (own->sockaddr.sin_addr.s_addr != from->sin_addr.s_addr ||
        own->sockaddr.sin_port != from->sin_port)
        return HAND_BACK;
    Py_ssize_t total_out = (len + 8) * route->count;
    if (total_out > ARENA) return HAND_BACK;
    Py_ssize_t clear, plain_len;
    if (open_packet(own, p, len, &clear, self->plain, &plain_len) != OPENED) return HAND_BACK;
    uint32_t counter = be32(p + len - 4);
    double now = monotonic_now();
    if (!replay_new(route->replay, counter) || !rate_would_allow(route->rate, now))
        return HAND_BACK; /* replayed or rate_limited: Python drops and counts it */

    /* Relayed from here on: the same state changes media.py makes, in its order; the
     * session's counters and last_media_at are written when the pump ends. */
    if (grow((void **)&self->touched, &self->touched_capacity, self->touched_count + 1,
             sizeof *self->touched) < 0 ||
        grow((void **)&self->sealed, &self->sealed_capacity, self->sealed_count + route->count,
             sizeof *self->sealed) < 0) {
        PyErr_NoMemory();
        return FAILED;
    }
    replay_accept(route->replay, counter);
    rate_allow(route->rate, now);
    self->packets_in++;
    self->bytes_in += (unsigned long long)len;
    if (!route->pending_in) self->touched[self->touched_count++] = route;
    route->pending_in++;
    route->last_at = now;
    if (self->out_count + route->count > MAX_OUT || self->arena_used + total_out > ARENA)
        flush(self);
    /* Every sealed datagram is as long as the one that came in: the same clear header,
     * payload, tag and counter suffix. */
    Py_ssize_t size = clear + plain_len + TAG + SUFFIX;
    for (int i = 0; i < route->count;) {
        CipherObject **receivers = route->receivers + i;
        unsigned char *out = self->arena + self->arena_used;
        int run = 1;
        if (receivers[0]->kind == KIND_XCHACHA && xchacha_wide()) {
            /* read_route puts a channel's XChaCha20 receivers last, side by side. */
            while (run < XCHACHA_LANES && i + run < route->count &&
                   receivers[run]->kind == KIND_XCHACHA)
                run++;
        }
        if (run > 1) { /* from two receivers on, a shared pass costs less than two seals */
            xchacha_seal_many(receivers, run, p, clear, self->plain, plain_len, out, size);
        } else if (seal_packet(receivers[0], p, clear, self->plain, plain_len, out) < 0) {
            self->send_errors++;
            i++;
            continue;
        }
        for (int k = 0; k < run; k++)
            queue_datagram(self, receivers[k], route->sessions[i + k], out + k * size, size);
        i += run;
    }
    return RELAYED;
}

/* The pump's counters into the node's stats. */
static int add_counters(RelayObject *self) {
    int status = 0;
    status |= bump(self->stats, s_packets_in, self->packets_in);
    status |= bump(self->stats, s_bytes_in, self->bytes_in);
    status |= bump(self->stats, s_packets_out, self->packets_out);
    status |= bump(self->stats, s_bytes_out, self->bytes_out);
    status |= bump(self->stats, s_send_errors, self->send_errors);
    self->packets_in = self->bytes_in = self->packets_out = self->bytes_out = 0;
    self->send_errors = 0;
    return status ? -1 : 0;
}

/* The members' counters into their sessions: each sender's packets_in and last_media_at,
 * each receiver's packets_out. Before the routes holding them are forgotten. */
static int add_member_counters(RelayObject *self, double now) {
    int status = 0;
    self->members_added_at = now;
    for (Py_ssize_t i = 0; i < self->touched_count; i++) {
        route_t *route = self->touched[i];
        /* Python may have seen a later datagram of its own (a keep-alive) since. */
        PyObject *seen = attr(route->sender, s_last_media_at);
        double before = seen != NULL && PyFloat_Check(seen) ? PyFloat_AS_DOUBLE(seen) : 0.0;
        Py_XDECREF(seen);
        if (route->last_at > before) {
            PyObject *stamp = PyFloat_FromDouble(route->last_at);
            if (stamp == NULL || PyObject_SetAttr(route->sender, s_last_media_at, stamp) < 0)
                status = -1;
            Py_XDECREF(stamp);
        }
        if (bump(route->sender, s_packets_in, route->pending_in) < 0) PyErr_Clear();
        route->pending_in = 0;
    }
    self->touched_count = 0;
    for (Py_ssize_t i = 0; i < self->sealed_count; i++) {
        CipherObject *receiver = self->sealed[i].cipher;
        if (bump(self->sealed[i].session, s_packets_out, receiver->pending_out) < 0)
            PyErr_Clear(); /* per-member counter, if kept */
        receiver->pending_out = 0;
    }
    self->sealed_count = 0;
    return status ? -1 : 0;
}

/* Whether the routes held are still the router's; forgets them when not. -1 on error. */
static int check_generation(RelayObject *self) {
    PyObject *value = PyObject_GetAttr(self->router, s_generation);
    if (value == NULL) return -1;
    long long generation = PyLong_AsLongLong(value);
    Py_DECREF(value);
    if (generation == -1 && PyErr_Occurred()) return -1;
    if (generation != self->generation) {
        if (add_member_counters(self, monotonic_now()) < 0) return -1;
        forget_routes(self);
        self->generation = generation;
    }
    return 0;
}

static PyObject *Relay_pump(RelayObject *self, PyObject *unused) {
    if (self->by_ssrc == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Relay not initialised");
        return NULL;
    }
    if (check_generation(self) < 0) return NULL;
    PyObject *handed = NULL;
    int failed = 0;
    self->read = 0;
    for (int round = 0; round < ROUNDS && !failed; round++) {
        for (int i = 0; i < BATCH; i++) {
            struct msghdr *header = &self->recv_msgs[i].msg_hdr;
            memset(header, 0, sizeof *header);
            header->msg_name = &self->recv_from[i];
            header->msg_namelen = sizeof self->recv_from[i];
            header->msg_iov = &self->recv_iov[i];
            header->msg_iovlen = 1;
        }
        int n = recvmmsg(self->fd, self->recv_msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            /* An ICMP error reported on the socket: what error_received counts in Python. */
            self->send_errors++;
            continue;
        }
        self->read += n;
        for (int i = 0; i < n; i++) {
            const unsigned char *p = self->recv_iov[i].iov_base;
            Py_ssize_t len = (Py_ssize_t)self->recv_msgs[i].msg_len;
            const struct sockaddr_in *from = &self->recv_from[i];
            int status = from->sin_family == AF_INET ? relay_one(self, p, len, from) : HAND_BACK;
            if (status == FAILED) {
                failed = 1;
                break;
            }
            if (status == RELAYED) continue;
            char host[INET_ADDRSTRLEN] = "";
            inet_ntop(AF_INET, &from->sin_addr, host, sizeof host);
            PyObject *item = Py_BuildValue("(y#(si))", p, len, host, (int)ntohs(from->sin_port));
            if (item == NULL || (handed == NULL && (handed = PyList_New(0)) == NULL) ||
                PyList_Append(handed, item) < 0) {
                Py_XDECREF(item);
                failed = 1;
                break;
            }
            Py_DECREF(item);
        }
        if (n < BATCH) break;
    }
    flush(self);
    int counted = add_counters(self);
    double now = monotonic_now();
    if (counted == 0 && now - self->members_added_at >= MEMBER_COUNTERS_S)
        counted = add_member_counters(self, now);
    if (counted < 0 || failed) {
        Py_XDECREF(handed);
        return NULL;
    }
    if (handed == NULL) Py_RETURN_NONE;
    return handed;
}

static PyObject *Relay_sync(RelayObject *self, PyObject *unused) {
    if (add_counters(self) < 0 || add_member_counters(self, monotonic_now()) < 0) return NULL;
    Py_RETURN_NONE;
}

/* arm(seconds): the poll timer fires once, `seconds` from now (a timerfd: to the
 * microsecond, where the event loop's timers round to milliseconds); arm(0) also clears
 * a timer that fired. */
static PyObject *Relay_arm(RelayObject *self, PyObject *arg) {
    double seconds = PyFloat_AsDouble(arg);
    if (seconds == -1.0 && PyErr_Occurred()) return NULL;
    if (!self->timer_open) {
        PyErr_SetString(PyExc_RuntimeError, "Relay not initialised");
        return NULL;
    }
    uint64_t expirations; /* one read clears a timer that fired (EAGAIN when none did) */
    (void)!read(self->timer_fd, &expirations, sizeof expirations);
    struct itimerspec when = {{0, 0}, {0, 0}};
    if (seconds > 0) {
        long long ns = (long long)(seconds * 1e9);
        when.it_value.tv_sec = (time_t)(ns / 1000000000LL);
        when.it_value.tv_nsec = (long)(ns % 1000000000LL);
        if (when.it_value.tv_sec == 0 && when.it_value.tv_nsec == 0) when.it_value.tv_nsec = 1;
    }
    if (timerfd_settime(self->timer_fd, 0, &when, NULL) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *Relay_timer_fd(RelayObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(self->timer_open ? self->timer_fd : -1);
}

static PyGetSetDef Relay_getset[] = {
    {"timer_fd", (getter)Relay_timer_fd, NULL,
     "The poll timer's descriptor: readable when an arm()ed timer fires.", NULL},
    {NULL}};

static PyMethodDef Relay_methods[] = {
    {"arm", (PyCFunction)Relay_arm, METH_O,
     "arm(seconds): make timer_fd readable once, seconds from now; arm(0) disarms and clears it."},
    {"pump", (PyCFunction)Relay_pump, METH_NOARGS,
     "Read what the socket holds; relay what can be relayed here, add the counters to the "
     "stats, and return the other datagrams as [(data, (host, port))] (None when none)."},
    {"sync", (PyCFunction)Relay_sync, METH_NOARGS,
     "Add every counter not yet added to the stats and the members' sessions now."},
    {NULL}};

static PyMemberDef Relay_members[] = {
    {"read", T_PYSSIZET, offsetof(RelayObject, read), READONLY,
     "Datagrams the last pump read (relayed or handed back)."},
    {NULL}};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "voxgate._fastpath.Relay",
    .tp_basicsize = sizeof(RelayObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Relay(fd, router, stats, forward): the media socket's reader in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Relay_init,
    .tp_dealloc = (destructor)Relay_dealloc,
    .tp_methods = Relay_methods,
    .tp_members = Relay_members,
    .tp_getset = Relay_getset,
};

/* --- module ------------------------------------------------------------------------------ */

static int chacha20_avx512_supported(void) {
#ifdef HAVE_CHACHA_AVX512
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

/* _chacha20([name]): which ChaCha20 key stream every XChaCha20 packet uses from now on,
 * "avx512" or "generic" (the tests run both); the one in use. */
static PyObject *module_chacha20(PyObject *self, PyObject *args) {
    (void)self;
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "|s", &name)) return NULL;
    if (name != NULL) {
        if (strcmp(name, "generic") == 0) {
            chacha20_blocks = chacha20_blocks_generic;
        } else if (strcmp(name, "avx512") == 0) {
#ifdef HAVE_CHACHA_AVX512
            if (!chacha20_avx512_supported()) {
                PyErr_SetString(PyExc_ValueError, "this CPU has no AVX-512VL");
                return NULL;
            }
            chacha20_blocks = chacha20_blocks_avx512;
#else
            PyErr_SetString(PyExc_ValueError, "built without the AVX-512VL ChaCha20");
            return NULL;
#endif
        } else {
            PyErr_SetString(PyExc_ValueError, "\"avx512\" or \"generic\"");
            return NULL;
        }
    }
    return PyUnicode_FromString(chacha20_blocks == chacha20_blocks_generic ? "generic" : "avx512");
}

/* _aes_gcm([name]): which AES-256-GCM Ciphers set up from now on use, "x86" (AES-NI and
 * PCLMULQDQ, here) or "openssl"; with a name, choose it (the tests run both). */
static PyObject *module_aes_gcm(PyObject *self, PyObject *args) {
    (void)self;
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "|s", &name)) return NULL;
    if (name != NULL) {
        if (strcmp(name, "openssl") == 0) {
            aes_gcm_x86 = 0;
        } else if (strcmp(name, "x86") == 0) {
#ifdef HAVE_AES_GCM_X86
            if (!aes_gcm_x86_supported()) {
                PyErr_SetString(PyExc_ValueError, "this CPU has no AES-NI and PCLMULQDQ");
                return NULL;
            }
            aes_gcm_x86 = 1;
#else
            PyErr_SetString(PyExc_ValueError, "built without the x86 AES-256-GCM");
            return NULL;
#endif
        } else {
            PyErr_SetString(PyExc_ValueError, "\"x86\" or \"openssl\"");
            return NULL;
        }
    }
    return PyUnicode_FromString(aes_gcm_x86 ? "x86" : "openssl");
}

static PyMethodDef module_methods[] = {
    {"_chacha20", module_chacha20, METH_VARARGS,
     "_chacha20([name]): the ChaCha20 key stream in use, \"avx512\" or \"generic\"."},
    {"_aes_gcm", module_aes_gcm, METH_VARARGS,
     "The AES-256-GCM that Ciphers set up from now on use (\"x86\" or \"openssl\"); "
     "with a name, choose it."},
    {NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "voxgate._fastpath",
    "The media plane's hot path in C (see server/fastpath.py).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    PyObject *errors = PyImport_ImportModule("voxgate.protocol.errors");
    if (errors == NULL) return NULL;
    DecryptionError = PyObject_GetAttrString(errors, "DecryptionError");
    PacketError = PyObject_GetAttrString(errors, "PacketError");
    Py_DECREF(errors);
    if (DecryptionError == NULL || PacketError == NULL) return NULL;
#ifdef HAVE_AES_GCM_X86
    aes_gcm_x86 = aes_gcm_x86_supported();
#endif
#ifdef HAVE_CHACHA_AVX512
    if (chacha20_avx512_supported()) chacha20_blocks = chacha20_blocks_avx512;
#endif
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(s_cipher, "cipher");
    INTERN(s_replay, "replay");
    INTERN(s_rate, "rate");
    INTERN(s_muted, "muted");
    INTERN(s_channel, "channel");
    INTERN(s_forward, "forward");
    INTERN(s_members, "members");
    INTERN(s_address, "address");
    INTERN(s_last_media_at, "last_media_at");
    INTERN(s_packets_in, "packets_in");
    INTERN(s_packets_out, "packets_out");
    INTERN(s_bytes_in, "bytes_in");
    INTERN(s_bytes_out, "bytes_out");
    INTERN(s_send_errors, "send_errors");
    INTERN(s_generation, "generation");
    if (PyType_Ready(&CipherType) < 0 || PyType_Ready(&ReplayType) < 0 ||
        PyType_Ready(&RateType) < 0 || PyType_Ready(&RelayType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Cipher", (PyObject *)&CipherType) < 0 ||
        PyModule_AddObjectRef(m, "ReplayWindow", (PyObject *)&ReplayType) < 0 ||
        PyModule_AddObjectRef(m, "RateLimit", (PyObject *)&RateType) < 0 ||
        PyModule_AddObjectRef(m, "Relay", (PyObject *)&RelayType) < 0 ||
        PyModule_AddIntConstant(m, "AES256_GCM", KIND_AES) < 0 ||
        PyModule_AddIntConstant(m, "XCHACHA20_POLY1305", KIND_XCHACHA) < 0 ||
        PyModule_AddIntConstant(m, "BATCH", BATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
