/*
 * The load generator's media half, for `voxgate bench relay`.
 *
 *   loadgen MEMBERS_FILE WARMUP_S SECONDS [PAYLOAD_HEX]
 *
 * MEMBERS_FILE lines: "fd channel ssrc speaker mode hexkey [counter]". Each fd is an inherited UDP
 * socket, already connected to the relay, of a member that Python joined through the real
 * handshake (Identify, IP discovery, Select Protocol, Session Description); hexkey is its
 * secret_key and mode its transport mode: "a" for aead_aes256_gcm_rtpsize, "x" for
 * aead_xchacha20_poly1305_rtpsize (OpenSSL has no XChaCha20, so HChaCha20 derives the
 * subkey here and OpenSSL's ChaCha20-Poly1305 does the rest, as libsodium does). counter,
 * optional, is where the member's transport nonce counter starts (0 without it; the RTP
 * sequence starts at counter mod 2^16, the timestamp at 960 times that): a member that
 * earlier runs of this generator sent for needs a counter above theirs, or the relay's
 * replay window drops its packets. A Python generator cannot both pace thousands of
 * senders and open hundreds of thousands of packets a second on one core without its own
 * queueing showing up as the relay's latency; this one can, so the figures are the relay's.
 *
 * Speakers send 50 packets a second each, with their phases spread evenly over the 20 ms
 * frame as independent clients' are (a generator that sends every speaker's frame in one
 * burst measures the burst, not the relay). Payloads are 60-160 bytes and start with the
 * send time (CLOCK_REALTIME ns) and the sender's ssrc. Every member opens every packet it
 * receives with its own key; the latency of a packet is the kernel's receive timestamp
 * (SO_TIMESTAMPNS) minus the send time, so it holds no queueing of this process.
 *
 * With PAYLOAD_HEX every payload is that template (its first 12 bytes replaced by the send
 * time and ssrc as above), so a bench can send, for instance, a real DAVE frame; then every
 * payload received is also checked against the template: "template_mismatch" counts those
 * whose length or bytes after the first 12 differ or whose ssrc is not the RTP header's,
 * and "dave_trailer" those ending in the DAVE magic 0xFA 0xFA.
 *
 * Runs WARMUP_S seconds, pauses 0.3 s, measures SECONDS (printing "measure" and "end" as
 * that window opens and closes), drains 0.3 s, then prints one JSON object: sent,
 * expected, received, bad, latency p50/p99/max in ms, seconds, and busy: the share of the
 * measured window and the drain that it was not waiting for packets, how near its own
 * limit it was.
 *
 * Groups, for measuring relays side by side: an eighth column puts a member in a group
 * (0 to 3; the counter column is then required), and LOADGEN_SLICE_MS=M makes the groups
 * take turns, M ms each (a multiple of the 20 ms frame), from the start of the measured
 * window (a member sends only in its group's slices, the warm-up included): each group is the load of one relay, so two
 * relays on one core are measured in the same second, in turns short enough that whatever
 * takes the machine for a second takes both alike, and never at once (neither pays for
 * the other's cache misses). The measured window is then a whole number of turns.
 * LOADGEN_GROUP_PIDS="pid,pid/pid" names each group's relay processes: their CPU (the
 * scheduler's sum over each of their tasks' schedstat) is read as each slice of the group
 * starts and a fifth of a slice after it ends, when what it queued has drained, and
 * summed. The JSON then has "groups", one object per group with its own counts,
 * latencies, "active_seconds" (its slices) and "cpu_seconds" (of its slices and their
 * drains; -1 without pids).
 *
 * It polls without sleeping, unless LOADGEN_WAIT=sleep: a generator that sleeps is woken
 * by the relay for nearly every packet, and on loopback the relay pays for that wakeup
 * (an inter-processor interrupt), which a relay's receivers across a network never cost
 * it. On a core it shares with a relay (bench workers on two cores), it must sleep.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_MEMBERS 16384
#define BATCH 64
#define MAX_PACKET 2048
#define FRAME_NS 20000000LL
#define MAX_GROUPS 4
#define MAX_PIDS 16

typedef struct {
    int fd;
    int channel;
    uint32_t ssrc;
    int speaker;
    uint16_t sequence;
    uint32_t timestamp;
    uint32_t nonce;
    char mode;
    int group;
    unsigned char key[32];
    EVP_CIPHER_CTX *open_ctx;
    EVP_CIPHER_CTX *seal_ctx;
} member_t;

static member_t members[MAX_MEMBERS];
static int member_count;
static int channel_size[MAX_MEMBERS];
static int speakers[MAX_MEMBERS];
static int speaker_count;

typedef struct {
    int64_t *latencies;
    size_t latency_count, latency_capacity;
    unsigned long long sent, expected, received, bad, template_mismatch, dave_trailer;
    int pids[MAX_PIDS];
    int pid_count;
    int64_t cpu_ns, cpu_mark; /* summed over its windows; at the open window's start */
    int cpu_failed;
} group_t;
static group_t groups[MAX_GROUPS];
static int group_count = 1;
static int measuring;
static unsigned char template_payload[MAX_PACKET];
static int template_len; /* 0: no template, sizes 60-160 */

static int64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int hex_key(const char *hex, unsigned char *key) {
    if (strlen(hex) != 64) return -1;
    for (int i = 0; i < 32; i++) {
        unsigned int byte;
        if (sscanf(hex + 2 * i, "%2x", &byte) != 1) return -1;
        key[i] = (unsigned char)byte;
    }
    return 0;
}

static int load_members(const char *path) {
    FILE *file = fopen(path, "r");
    if (!file) { perror(path); return -1; }
    char line[512];
    int number = 0;
    while (fgets(line, sizeof line, file)) {
        number++;
        if (!strchr(line, '\n') && !feof(file)) {
            fprintf(stderr, "%s:%d: line too long\n", path, number);
            fclose(file);
            return -1;
        }
        int fd, channel, speaker, group = 0, end6 = 0, end7 = 0, end8 = 0;
        unsigned long ssrc, counter = 0;
        char mode, hex[80];
        int fields = sscanf(line, "%d %d %lu %d %c %79s%n %lu%n %d%n", &fd, &channel, &ssrc,
                            &speaker, &mode, hex, &end6, &counter, &end7, &group, &end8);
        if (fields == EOF) continue; /* a blank line */
        const char *rest = line + (fields == 8 ? end8 : fields == 7 ? end7 : end6);
        while (fields >= 6 && (*rest == ' ' || *rest == '\t' || *rest == '\r' || *rest == '\n'))
            rest++;
        if (fields < 6 || *rest || counter > 0xFFFFFFFFUL || group < 0 || group >= MAX_GROUPS) {
            fprintf(stderr,
                    "%s:%d: not \"fd channel ssrc speaker mode hexkey [counter [group]]\"\n",
                    path, number);
            fclose(file);
            return -1;
        }
        if (mode != 'a' && mode != 'x') { fprintf(stderr, "unknown mode %c\n", mode); return -1; }
        if (member_count == MAX_MEMBERS || channel < 0 || channel >= MAX_MEMBERS) {
            fprintf(stderr, "too many members or channels\n");
            return -1;
        }
        unsigned char key[32];
        if (hex_key(hex, key)) { fprintf(stderr, "bad key for ssrc %lu\n", ssrc); return -1; }
        member_t *m = &members[member_count++];
        m->fd = fd;
        m->channel = channel;
        m->ssrc = (uint32_t)ssrc;
        m->speaker = speaker;
        m->mode = mode;
        m->group = group;
        if (group >= group_count) group_count = group + 1;
        m->nonce = (uint32_t)counter;
        m->sequence = (uint16_t)counter;
        m->timestamp = (uint32_t)counter * 960u;
        memcpy(m->key, key, 32);
        m->open_ctx = EVP_CIPHER_CTX_new();
        m->seal_ctx = EVP_CIPHER_CTX_new();
        const EVP_CIPHER *cipher = mode == 'a' ? EVP_aes_256_gcm() : EVP_chacha20_poly1305();
        EVP_DecryptInit_ex(m->open_ctx, cipher, NULL, mode == 'a' ? key : NULL, NULL);
        EVP_EncryptInit_ex(m->seal_ctx, cipher, NULL, mode == 'a' ? key : NULL, NULL);
        channel_size[channel]++;
        if (speaker) speakers[speaker_count++] = member_count - 1;
    }
    fclose(file);
    /* The groups' speakers dealt in turn, so that each group's phases spread over the
     * whole frame as the one group's do (in file order, a group's would share a part of it). */
    int dealt[MAX_MEMBERS], count = 0, taken[MAX_GROUPS] = {0};
    while (count < speaker_count) {
        for (int g = 0; g < group_count; g++) {
            for (int i = taken[g]; i < speaker_count; i++) {
                taken[g] = i + 1;
                if (members[speakers[i]].group == g) {
                    dealt[count++] = speakers[i];
                    break;
                }
            }
        }
    }
    memcpy(speakers, dealt, sizeof(int) * (size_t)speaker_count);
    return 0;
}

#define ROTL(v, n) (((v) << (n)) | ((v) >> (32 - (n))))
#define QUARTER(a, b, c, d)                                  \
    a += b; d ^= a; d = ROTL(d, 16); c += d; b ^= c; b = ROTL(b, 12); \
    a += b; d ^= a; d = ROTL(d, 8); c += d; b ^= c; b = ROTL(b, 7)

static uint32_t load32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* HChaCha20: the XChaCha20 subkey of key and the nonce's first 16 bytes. */
static void hchacha20(const unsigned char key[32], const unsigned char nonce[16],
                      unsigned char subkey[32]) {
    uint32_t x[16] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574};
    for (int i = 0; i < 8; i++) x[4 + i] = load32(key + 4 * i);
    for (int i = 0; i < 4; i++) x[12 + i] = load32(nonce + 4 * i);
    for (int round = 0; round < 10; round++) {
        QUARTER(x[0], x[4], x[8], x[12]);
        QUARTER(x[1], x[5], x[9], x[13]);
        QUARTER(x[2], x[6], x[10], x[14]);
        QUARTER(x[3], x[7], x[11], x[15]);
        QUARTER(x[0], x[5], x[10], x[15]);
        QUARTER(x[1], x[6], x[11], x[12]);
        QUARTER(x[2], x[7], x[8], x[13]);
        QUARTER(x[3], x[4], x[9], x[14]);
    }
    static const int words[8] = {0, 1, 2, 3, 12, 13, 14, 15};
    for (int i = 0; i < 8; i++) {
        uint32_t w = x[words[i]];
        subkey[4 * i] = (unsigned char)w;
        subkey[4 * i + 1] = (unsigned char)(w >> 8);
        subkey[4 * i + 2] = (unsigned char)(w >> 16);
        subkey[4 * i + 3] = (unsigned char)(w >> 24);
    }
}

/* The key and IV for one packet: the 4-byte counter leads the nonce (12 bytes for AES-GCM,
 * 24 for XChaCha20), zeros fill the rest. */
static void packet_key(const member_t *m, const unsigned char counter[4], const unsigned char **key,
                       unsigned char subkey[32], unsigned char iv[12]) {
    memset(iv, 0, 12);
    if (m->mode == 'a') {
        memcpy(iv, counter, 4);
        *key = NULL;
        return;
    }
    unsigned char head[16] = {0};
    memcpy(head, counter, 4);
    hchacha20(m->key, head, subkey);
    *key = subkey;
}

/* One RTP packet in the rtpsize layout: 12-byte header as AAD, ciphertext, 16-byte tag,
 * 4-byte big-endian nonce counter. */
static int seal_packet(member_t *m, const unsigned char *plain, int plain_len, unsigned char *out) {
    out[0] = 0x80;
    out[1] = 0x78;
    uint16_t sequence = htons(m->sequence++);
    uint32_t timestamp = htonl(m->timestamp);
    uint32_t ssrc = htonl(m->ssrc);
    m->timestamp += 960;
    memcpy(out + 2, &sequence, 2);
    memcpy(out + 4, &timestamp, 4);
    memcpy(out + 8, &ssrc, 4);
    unsigned char iv[12], subkey[32];
    const unsigned char *key;
    uint32_t nonce = htonl(m->nonce++);
    packet_key(m, (const unsigned char *)&nonce, &key, subkey, iv);
    int n, tail;
    EVP_EncryptInit_ex(m->seal_ctx, NULL, NULL, key, iv);
    EVP_EncryptUpdate(m->seal_ctx, NULL, &n, out, 12);
    EVP_EncryptUpdate(m->seal_ctx, out + 12, &n, plain, plain_len);
    EVP_EncryptFinal_ex(m->seal_ctx, out + 12 + n, &tail);
    EVP_CIPHER_CTX_ctrl(m->seal_ctx, EVP_CTRL_GCM_GET_TAG, 16, out + 12 + plain_len);
    memcpy(out + 12 + plain_len + 16, &nonce, 4);
    return 12 + plain_len + 16 + 4;
}

/* Bytes left in clear by the rtpsize modes: fixed header, CSRCs, extension header. */
static int clear_size(const unsigned char *p, int len) {
    if (len < 12 || (p[0] >> 6) != 2) return -1;
    int size = 12 + 4 * (p[0] & 0x0f);
    if (p[0] & 0x10) size += 4;
    return size <= len ? size : -1;
}

static int open_packet(member_t *m, const unsigned char *p, int len, unsigned char *plain) {
    int clear = clear_size(p, len);
    if (clear < 0) return -1;
    int sealed = len - clear - 4 - 16;
    if (sealed < 0) return -1;
    unsigned char iv[12], subkey[32];
    const unsigned char *key;
    packet_key(m, p + len - 4, &key, subkey, iv);
    int out, tail;
    EVP_DecryptInit_ex(m->open_ctx, NULL, NULL, key, iv);
    EVP_DecryptUpdate(m->open_ctx, NULL, &out, p, clear);
    EVP_DecryptUpdate(m->open_ctx, plain, &out, p + clear, sealed);
    EVP_CIPHER_CTX_ctrl(m->open_ctx, EVP_CTRL_GCM_SET_TAG, 16, (void *)(p + clear + sealed));
    if (EVP_DecryptFinal_ex(m->open_ctx, plain + out, &tail) <= 0) return -1;
    /* A voxgate relay may carry a header extension in front of the payload. */
    if (p[0] & 0x10) {
        int words = (p[clear - 2] << 8) | p[clear - 1];
        if (4 * words > sealed) return -1;
        memmove(plain, plain + 4 * words, (size_t)(sealed - 4 * words));
        sealed -= 4 * words;
    }
    return sealed;
}

static void record_latency(group_t *g, int64_t ns) {
    if (g->latency_count == g->latency_capacity) {
        g->latency_capacity = g->latency_capacity ? 2 * g->latency_capacity : 1 << 16;
        g->latencies = realloc(g->latencies, g->latency_capacity * sizeof *g->latencies);
        if (!g->latencies) { perror("realloc"); exit(1); }
    }
    g->latencies[g->latency_count++] = ns;
}

/* The CPU time of a group's relay processes so far, in ns: the scheduler's own sum per
 * thread, as the bench reads it (exact, and without the hypervisor's steal). */
static int64_t group_cpu_ns(group_t *g) {
    int64_t total = 0;
    for (int i = 0; i < g->pid_count; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/task", g->pids[i]);
        DIR *tasks = opendir(path);
        if (!tasks) { g->cpu_failed = 1; continue; }
        struct dirent *task;
        while ((task = readdir(tasks))) {
            if (task->d_name[0] == '.') continue;
            char stat_path[320];
            snprintf(stat_path, sizeof stat_path, "/proc/%d/task/%s/schedstat", g->pids[i],
                     task->d_name);
            FILE *file = fopen(stat_path, "r");
            if (!file) continue; /* a thread that ended meanwhile */
            long long ns;
            if (fscanf(file, "%lld", &ns) == 1) total += ns;
            fclose(file);
        }
        closedir(tasks);
    }
    return total;
}

static int parse_group_pids(const char *text) {
    int group = 0;
    const char *p = text;
    while (*p) {
        if (*p == '/') {
            if (++group >= MAX_GROUPS) return -1;
            p++;
            continue;
        }
        if (*p == ',') { p++; continue; }
        char *end;
        long pid = strtol(p, &end, 10);
        if (end == p || pid <= 0 || groups[group].pid_count == MAX_PIDS) return -1;
        groups[group].pids[groups[group].pid_count++] = (int)pid;
        p = end;
    }
    return 0;
}

static unsigned char buffers[BATCH][MAX_PACKET];
static char controls[BATCH][CMSG_SPACE(sizeof(struct timespec))];
static struct iovec iovecs[BATCH];
static struct mmsghdr messages[BATCH];

static void receive(member_t *m) {
    unsigned char plain[MAX_PACKET];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            messages[i].msg_hdr.msg_control = controls[i];
            messages[i].msg_hdr.msg_controllen = sizeof controls[i];
        }
        int count = recvmmsg(m->fd, messages, BATCH, MSG_DONTWAIT, NULL);
        if (count <= 0) return;
        for (int i = 0; i < count; i++) {
            const unsigned char *p = buffers[i];
            int len = (int)messages[i].msg_len;
            /* IP discovery answers and keep-alives are not RTP; RTCP is not ours. */
            if (len < 12 || (p[0] >> 6) != 2 || (p[1] >= 200 && p[1] <= 204)) continue;
            group_t *g = &groups[m->group];
            int plain_len = open_packet(m, p, len, plain);
            if (plain_len < 12) {
                if (measuring) g->bad++;
                continue;
            }
            if (!measuring) continue;
            g->received++;
            if (template_len) {
                uint32_t stamped, header;
                memcpy(&stamped, plain + 8, 4); /* host order, as sent */
                memcpy(&header, p + 8, 4);
                if (plain_len != template_len || stamped != ntohl(header) ||
                    memcmp(plain + 12, template_payload + 12, (size_t)(template_len - 12)))
                    g->template_mismatch++;
                if (plain[plain_len - 2] == 0xFA && plain[plain_len - 1] == 0xFA)
                    g->dave_trailer++;
            }
            int64_t sent_ns;
            memcpy(&sent_ns, plain, 8);
            struct cmsghdr *cmsg = CMSG_FIRSTHDR(&messages[i].msg_hdr);
            for (; cmsg; cmsg = CMSG_NXTHDR(&messages[i].msg_hdr, cmsg)) {
                if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_TIMESTAMPNS) {
                    struct timespec arrived;
                    memcpy(&arrived, CMSG_DATA(cmsg), sizeof arrived);
                    record_latency(g, (int64_t)arrived.tv_sec * 1000000000LL + arrived.tv_nsec -
                                   sent_ns);
                }
            }
        }
        if (count < BATCH) return;
    }
}

static int compare(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double percentile_ms(const int64_t *latencies, size_t count, double p) {
    if (!count) return 0;
    size_t index = (size_t)(p * (double)(count - 1));
    return (double)latencies[index] / 1e6;
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: %s MEMBERS_FILE WARMUP_S SECONDS [PAYLOAD_HEX]\n", argv[0]);
        return 2;
    }
    if (argc == 5) {
        size_t hex_len = strlen(argv[4]);
        if (hex_len % 2 || hex_len / 2 < 12 || hex_len / 2 > 1200) {
            fprintf(stderr, "the payload template takes 12 to 1200 bytes in hex\n");
            return 2;
        }
        template_len = (int)(hex_len / 2);
        for (int i = 0; i < template_len; i++) {
            unsigned int byte;
            if (sscanf(argv[4] + 2 * i, "%2x", &byte) != 1) {
                fprintf(stderr, "bad payload template\n");
                return 2;
            }
            template_payload[i] = (unsigned char)byte;
        }
    }
    if (load_members(argv[1])) return 1;
    double warmup_s = atof(argv[2]), seconds = atof(argv[3]);
    const char *slice_text = getenv("LOADGEN_SLICE_MS");
    int64_t slice_ns = slice_text ? (int64_t)(atof(slice_text) * 1e6) : 0;
    if (group_count > 1 && slice_ns <= 0) {
        fprintf(stderr, "members in several groups need LOADGEN_SLICE_MS\n");
        return 2;
    }
    if (group_count == 1) slice_ns = 0;
    if (slice_ns % FRAME_NS) {
        /* Else a speaker whose phase falls early in the frame sends once more per slice
         * than one whose phase falls late, and a group's rate is not its members'. */
        fprintf(stderr, "LOADGEN_SLICE_MS must be a multiple of the 20 ms frame\n");
        return 2;
    }
    const char *pids_text = getenv("LOADGEN_GROUP_PIDS");
    if (pids_text && parse_group_pids(pids_text)) {
        fprintf(stderr, "LOADGEN_GROUP_PIDS takes \"pid,pid/pid\", a list per group\n");
        return 2;
    }
    for (int i = 0; i < BATCH; i++) {
        iovecs[i].iov_base = buffers[i];
        iovecs[i].iov_len = MAX_PACKET;
        messages[i].msg_hdr.msg_iov = &iovecs[i];
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    int epoll = epoll_create1(0);
    int on = 1, buffer = 1 << 20;
    for (int i = 0; i < member_count; i++) {
        setsockopt(members[i].fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
        setsockopt(members[i].fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
        struct epoll_event event = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(epoll, EPOLL_CTL_ADD, members[i].fd, &event)) {
            perror("epoll_ctl");
            return 1;
        }
    }
    /* Phases: speaker k of S sends at start + k * 20 ms / S + n * 20 ms. */
    int64_t start = now_ns(CLOCK_MONOTONIC) + 10000000LL;
    int64_t warmup_end = start + (int64_t)(warmup_s * 1e9);
    int64_t measure_start = warmup_end + 300000000LL;
    int64_t window_ns = (int64_t)(seconds * 1e9);
    int64_t turn_ns = slice_ns * group_count; /* every group's slice once */
    int turns = 1;
    if (slice_ns) {
        turns = (int)((window_ns + turn_ns - 1) / turn_ns);
        if (turns < 1) turns = 1;
        window_ns = turns * turn_ns;
    }
    int64_t measure_end = measure_start + window_ns;
    int64_t drain_end = measure_end + 300000000LL;
    /* Slice k (of group k mod G) starts at measure_start + k * slice, k negative in the
     * warm-up: counted from a start a whole number of turns before measure_start. */
    int64_t slices_origin = measure_start;
    if (slice_ns) slices_origin -= ((measure_start - start) / turn_ns + 1) * turn_ns;
    /* A group's CPU is read at each of its slices' start and a fifth of a slice after its
     * end: the next CPU event of each kind, as a slice index within the measured window. */
    int64_t drain_ns = slice_ns / 5;
    int next_open = 0, next_close = 0, slice_total = turns * group_count;
    int64_t step = speaker_count ? FRAME_NS / speaker_count : FRAME_NS;
    long long tick = 0; /* index of the next send over all speakers */
    uint32_t random_state = 7;
    unsigned char plain[MAX_PACKET], packet[MAX_PACKET];
    struct epoll_event events[256];
    int announced = 0;
    const char *wait_mode = getenv("LOADGEN_WAIT");
    int spin = !(wait_mode && strcmp(wait_mode, "sleep") == 0);
    int timer = -1;
    if (!spin) {
        timer = timerfd_create(CLOCK_MONOTONIC, 0);
        struct epoll_event timer_event = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
        epoll_ctl(epoll, EPOLL_CTL_ADD, timer, &timer_event);
    }
    int64_t idle_ns = 0; /* of the measured window and the drain, waiting for packets */

    for (;;) {
        int64_t now = now_ns(CLOCK_MONOTONIC);
        if (now >= drain_end) break;
        /* Told as they pass, so the bench samples the relay's CPU over this window alone. */
        if (announced == 0 && now >= measure_start) {
            printf("measure\n");
            fflush(stdout);
            announced = 1;
        }
        if (announced == 1 && now >= measure_end) {
            printf("end\n");
            fflush(stdout);
            announced = 2;
        }
        measuring = now >= measure_start && now < drain_end;
        /* With two groups or more a group's close and its next open are a slice apart. */
        while (slice_ns && next_close < slice_total &&
               now >= measure_start + (next_close + 1) * slice_ns + drain_ns) {
            group_t *g = &groups[next_close++ % group_count];
            if (g->pid_count) g->cpu_ns += group_cpu_ns(g) - g->cpu_mark;
        }
        while (slice_ns && next_open < slice_total && now >= measure_start + next_open * slice_ns) {
            group_t *g = &groups[next_open++ % group_count];
            if (g->pid_count) g->cpu_mark = group_cpu_ns(g);
        }
        /* Send everything due, then poll for packets (or sleep until the next send or a
         * packet). Whether a send belongs to the warm-up or the measured window goes by when
         * it was due, not when it went: sends caught up after the generator lost its core
         * across the window's start would count as measured, and those across its end
         * would be dropped. */
        while (speaker_count) {
            int64_t due = start + tick * step;
            if (due > now) break;
            member_t *m = &members[speakers[tick % speaker_count]];
            int measured = due >= measure_start && due < measure_end;
            int sending = due < warmup_end || measured;
            if (sending && slice_ns &&
                ((due - slices_origin) / slice_ns) % group_count != m->group) {
                tick++;
                continue;
            }
            if (sending) {
                random_state = random_state * 1103515245u + 12345u;
                int size = 60 + (int)((random_state >> 16) % 101);
                if (template_len) {
                    size = template_len;
                    memcpy(plain, template_payload, (size_t)size);
                } else {
                    memset(plain, 0x55, (size_t)size);
                }
                int64_t stamp = now_ns(CLOCK_REALTIME);
                memcpy(plain, &stamp, 8);
                memcpy(plain + 8, &m->ssrc, 4);
                int len = seal_packet(m, plain, size, packet);
                if (send(m->fd, packet, (size_t)len, 0) == len && measured) {
                    groups[m->group].sent++;
                    groups[m->group].expected +=
                        (unsigned long long)(channel_size[m->channel] - 1);
                }
            }
            tick++;
        }
        if (!spin) {
            int64_t next = speaker_count ? start + tick * step : drain_end;
            if (next > drain_end) next = drain_end;
            struct itimerspec when = {.it_value = {.tv_sec = next / 1000000000LL,
                                                   .tv_nsec = next % 1000000000LL}};
            timerfd_settime(timer, TFD_TIMER_ABSTIME, &when, NULL);
        }
        int64_t waited = now_ns(CLOCK_MONOTONIC);
        int ready = epoll_wait(epoll, events, 256, spin ? 0 : -1);
        if (ready < 0 && errno != EINTR) { perror("epoll_wait"); return 1; }
        if (measuring && (!spin || ready <= 0)) idle_ns += now_ns(CLOCK_MONOTONIC) - waited;
        for (int i = 0; i < ready; i++) {
            uint32_t index = events[i].data.u32;
            if (index == UINT32_MAX) {
                uint64_t expirations;
                if (read(timer, &expirations, sizeof expirations) < 0) continue;
                continue;
            }
            receive(&members[index]);
        }
    }
    /* The whole, every group's packets together, and with groups each group alone. */
    group_t all = {0};
    for (int i = 0; i < group_count; i++) {
        group_t *g = &groups[i];
        qsort(g->latencies, g->latency_count, sizeof *g->latencies, compare);
        all.sent += g->sent;
        all.expected += g->expected;
        all.received += g->received;
        all.bad += g->bad;
        all.template_mismatch += g->template_mismatch;
        all.dave_trailer += g->dave_trailer;
        all.latency_count += g->latency_count;
    }
    all.latencies = malloc((all.latency_count + 1) * sizeof *all.latencies);
    if (!all.latencies) { perror("malloc"); return 1; }
    for (int i = 0, at = 0; i < group_count; i++) {
        memcpy(all.latencies + at, groups[i].latencies,
               groups[i].latency_count * sizeof *all.latencies);
        at += (int)groups[i].latency_count;
    }
    qsort(all.latencies, all.latency_count, sizeof *all.latencies, compare);
    printf("{\"sent\": %llu, \"expected\": %llu, \"received\": %llu, \"bad\": %llu, "
           "\"latency_samples\": %zu, \"latency_p50_ms\": %.3f, \"latency_p99_ms\": %.3f, "
           "\"latency_max_ms\": %.3f, \"seconds\": %.3f, \"payload_template\": %d, "
           "\"template_mismatch\": %llu, \"dave_trailer\": %llu, \"busy\": %.3f",
           all.sent, all.expected, all.received, all.bad, all.latency_count,
           percentile_ms(all.latencies, all.latency_count, 0.5),
           percentile_ms(all.latencies, all.latency_count, 0.99),
           percentile_ms(all.latencies, all.latency_count, 1.0), (double)window_ns / 1e9,
           template_len, all.template_mismatch, all.dave_trailer,
           1.0 - (double)idle_ns / ((double)(drain_end - measure_start)));
    if (slice_ns) {
        printf(", \"slice_ms\": %.3f, \"groups\": [", (double)slice_ns / 1e6);
        for (int i = 0; i < group_count; i++) {
            group_t *g = &groups[i];
            printf("%s{\"sent\": %llu, \"expected\": %llu, \"received\": %llu, "
                   "\"bad\": %llu, \"latency_samples\": %zu, \"latency_p50_ms\": %.3f, "
                   "\"latency_p99_ms\": %.3f, \"latency_max_ms\": %.3f, "
                   "\"template_mismatch\": %llu, \"dave_trailer\": %llu, "
                   "\"active_seconds\": %.3f, \"cpu_seconds\": %.6f}",
                   i ? ", " : "", g->sent, g->expected, g->received, g->bad, g->latency_count,
                   percentile_ms(g->latencies, g->latency_count, 0.5),
                   percentile_ms(g->latencies, g->latency_count, 0.99),
                   percentile_ms(g->latencies, g->latency_count, 1.0), g->template_mismatch,
                   g->dave_trailer, (double)(turns * slice_ns) / 1e9,
                   g->pid_count && !g->cpu_failed ? (double)g->cpu_ns / 1e9 : -1.0);
        }
        printf("]");
    }
    printf("}\n");
    return 0;
}
