/*
 * The C media path's seal and open, per receiver, without Python or the kernel:
 *
 *     cc -O2 bench/seal.c $(python3-config --includes) $(python3-config --ldflags --embed) \
 *         -Wl,-rpath,$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))') \
 *         -lcrypto -o /tmp/seal && /tmp/seal [PAYLOAD]
 *
 * For channels of 2 to 16 XChaCha20 receivers of one packet (default 120 bytes of Opus,
 * the size bench/forward.py relays), the nanoseconds per receiver of sealing them the way
 * relay_one does (xchacha_seal_many: the AVX-512 passes shared by the receivers), of
 * sealing them one at a time (seal_packet, the path of every machine without AVX-512),
 * and of AES-256-GCM's seal_packet; then one open of each mode, which every incoming
 * packet costs once. Each figure is the median of seven rounds, the three measured in
 * turn within a round, so that the machine's drift moves them alike.
 *
 * It includes src/voxgate/_fastpath.c whole, so it measures the code that ships.
 */
#include "../src/voxgate/_fastpath.c"

#include <stdio.h>
#include <stdlib.h>

#define REPEATS 7
#define ITERATIONS 20000

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *values) {
    qsort(values, REPEATS, sizeof *values, by_value);
    return values[REPEATS / 2];
}

static CipherObject xchacha[XCHACHA_LANES], aes[XCHACHA_LANES];
static CipherObject *receivers[XCHACHA_LANES];
static unsigned char out[XCHACHA_LANES * 2048], opened[2048];

int main(int argc, char **argv) {
    Py_ssize_t payload = argc > 1 ? atoi(argv[1]) : 120;
    if (payload < 0 || payload > 1500) {
        fprintf(stderr, "a payload of 0 to 1500 bytes\n");
        return 2;
    }
    for (int j = 0; j < XCHACHA_LANES; j++) {
        xchacha[j].kind = KIND_XCHACHA;
        aes[j].kind = KIND_AES;
        for (int i = 0; i < 32; i++) xchacha[j].key[i] = aes[j].key[i] = (unsigned char)(i * j + 1);
#ifdef HAVE_AES_GCM_X86
        aes[j].x86 = aes_gcm_x86_supported();
        if (aes[j].x86) aes_gcm_setup(&aes[j].gcm, aes[j].key);
#endif
        receivers[j] = &xchacha[j];
    }
#ifdef HAVE_AES_GCM_X86
    if (!aes_gcm_x86_supported()) {
        fprintf(stderr, "AES-256-GCM here needs AES-NI and PCLMULQDQ (OpenSSL's is not set up)\n");
        return 2;
    }
#endif
#ifdef HAVE_CHACHA_AVX512
    if (chacha20_avx512_supported()) chacha20_blocks = chacha20_blocks_avx512;
#endif
    printf("XChaCha20 seals %s\n", xchacha_wide() ? "shared by the receivers (AVX-512F)"
                                                  : "one at a time (no AVX-512 here)");
    unsigned char clear[12] = {0x80, 0x78}, plain[1500];
    memset(plain, 0x5a, sizeof plain);
    Py_ssize_t size = 12 + payload + TAG + SUFFIX;
    printf("%9s %12s %12s %12s   ns per receiver, %zd-byte payload\n", "receivers", "shared",
           "one by one", "AES-GCM", payload);
    static const int channels[] = {2, 3, 4, 6, 9, 12, 16}; /* receivers: members - 1 */
    for (size_t c = 0; c < sizeof channels / sizeof *channels; c++) {
        int n = channels[c];
        double shared[REPEATS], single[REPEATS], gcm[REPEATS];
        for (int round = 0; round < REPEATS; round++) {
            double started = seconds();
            for (int k = 0; k < ITERATIONS; k++)
                xchacha_seal_many(receivers, n, clear, 12, plain, payload, out, size);
            double middle = seconds();
            for (int k = 0; k < ITERATIONS; k++)
                for (int j = 0; j < n; j++)
                    seal_packet(&xchacha[j], clear, 12, plain, payload, out + j * size);
            double third = seconds();
            for (int k = 0; k < ITERATIONS; k++)
                for (int j = 0; j < n; j++)
                    seal_packet(&aes[j], clear, 12, plain, payload, out + j * size);
            double ended = seconds();
            shared[round] = (middle - started) / ITERATIONS / n * 1e9;
            single[round] = (third - middle) / ITERATIONS / n * 1e9;
            gcm[round] = (ended - third) / ITERATIONS / n * 1e9;
        }
        printf("%9d %12.0f %12.0f %12.0f\n", n, median(shared), median(single), median(gcm));
    }
    double open_xchacha[REPEATS], open_aes[REPEATS];
    for (int round = 0; round < REPEATS; round++) {
        /* Opening checks no counter: the same packet, again and again. */
        Py_ssize_t clear_len, plain_len;
        seal_packet(&xchacha[0], clear, 12, plain, payload, out);
        seal_packet(&aes[0], clear, 12, plain, payload, out + size);
        double started = seconds();
        for (int k = 0; k < ITERATIONS; k++)
            open_packet(&xchacha[0], out, size, &clear_len, opened, &plain_len);
        double middle = seconds();
        for (int k = 0; k < ITERATIONS; k++)
            open_packet(&aes[0], out + size, size, &clear_len, opened, &plain_len);
        double ended = seconds();
        open_xchacha[round] = (middle - started) / ITERATIONS * 1e9;
        open_aes[round] = (ended - middle) / ITERATIONS * 1e9;
    }
    printf("an open (once per packet in): XChaCha20 %.0f ns, AES-GCM %.0f ns\n", median(open_xchacha),
           median(open_aes));
    return 0;
}
