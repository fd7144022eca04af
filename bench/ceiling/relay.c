/*
 * The ceiling: a minimal C relay doing what voxgate's media plane does for
 * aead_aes256_gcm_rtpsize, and nothing else, so the bench can say how close voxgate gets.
 *
 *   relay PORT MEMBERS_FILE        (MEMBERS_FILE lines: "channel ssrc hexkey")
 *
 * One UDP socket. A member's address is learnt from its 74-byte IP discovery request
 * (answered like voxgate does). Each RTP packet is opened with the sender's key (header as
 * AAD, 16-byte tag, 4-byte big-endian nonce suffix); one that does not authenticate is
 * dropped. It is sealed again for every other member of the channel with that member's
 * key and its own nonce counter, and sent. Prints counters on SIGTERM/SIGINT.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_MEMBERS 16384
#define MAX_PACKET 2048

typedef struct {
    uint32_t ssrc;
    int channel;
    int known; /* address learnt */
    struct sockaddr_in addr;
    uint32_t nonce;
    EVP_CIPHER_CTX *open_ctx;
    EVP_CIPHER_CTX *seal_ctx;
} member_t;

static member_t members[MAX_MEMBERS];
static int member_count;
/* Open addressing over ssrc, and each member's channel as a range of members[]: the
 * members file lists a channel's members together. */
#define SLOTS 65536
static int slot_of[SLOTS];
static int channel_first[MAX_MEMBERS], channel_count[MAX_MEMBERS];
static volatile sig_atomic_t stopping;
static unsigned long long in_packets, out_packets, dropped;

static void on_signal(int sig) { (void)sig; stopping = 1; }

static member_t *by_ssrc(uint32_t ssrc) {
    for (uint32_t i = (ssrc * 2654435761u) % SLOTS;; i = (i + 1) % SLOTS) {
        int index = slot_of[i];
        if (index < 0) return NULL;
        if (members[index].ssrc == ssrc) return &members[index];
    }
}

static void index_members(void) {
    for (int i = 0; i < SLOTS; i++) slot_of[i] = -1;
    for (int index = 0; index < member_count; index++) {
        uint32_t i = (members[index].ssrc * 2654435761u) % SLOTS;
        while (slot_of[i] >= 0) i = (i + 1) % SLOTS;
        slot_of[i] = index;
        int first = index;
        while (first > 0 && members[first - 1].channel == members[index].channel) first--;
        channel_first[index] = first;
    }
    for (int index = member_count - 1; index >= 0; index--) {
        int last = index;
        while (last + 1 < member_count && members[last + 1].channel == members[index].channel) last++;
        channel_count[index] = last - channel_first[index] + 1;
    }
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
    int channel;
    unsigned long ssrc;
    char hex[80];
    while (member_count < MAX_MEMBERS && fscanf(file, "%d %lu %79s", &channel, &ssrc, hex) == 3) {
        unsigned char key[32];
        if (hex_key(hex, key)) { fprintf(stderr, "bad key for ssrc %lu\n", ssrc); return -1; }
        member_t *m = &members[member_count++];
        m->ssrc = (uint32_t)ssrc;
        m->channel = channel;
        m->open_ctx = EVP_CIPHER_CTX_new();
        m->seal_ctx = EVP_CIPHER_CTX_new();
        EVP_DecryptInit_ex(m->open_ctx, EVP_aes_256_gcm(), NULL, key, NULL);
        EVP_EncryptInit_ex(m->seal_ctx, EVP_aes_256_gcm(), NULL, key, NULL);
    }
    fclose(file);
    return 0;
}

/* Bytes left in clear by the rtpsize modes: fixed header, CSRCs, extension header. */
static int clear_size(const unsigned char *p, int len) {
    if (len < 12 || (p[0] >> 6) != 2) return -1;
    int size = 12 + 4 * (p[0] & 0x0f);
    if (p[0] & 0x10) size += 4;
    return size <= len ? size : -1;
}

static int open_packet(member_t *m, const unsigned char *p, int len, int clear, unsigned char *plain) {
    int sealed = len - clear - 4 - 16;
    if (sealed < 0) return -1;
    unsigned char iv[12] = {0};
    memcpy(iv, p + len - 4, 4);
    int out, tail;
    EVP_DecryptInit_ex(m->open_ctx, NULL, NULL, NULL, iv);
    EVP_DecryptUpdate(m->open_ctx, NULL, &out, p, clear);
    EVP_DecryptUpdate(m->open_ctx, plain, &out, p + clear, sealed);
    EVP_CIPHER_CTX_ctrl(m->open_ctx, EVP_CTRL_GCM_SET_TAG, 16, (void *)(p + clear + sealed));
    if (EVP_DecryptFinal_ex(m->open_ctx, plain + out, &tail) <= 0) return -1;
    return sealed;
}

static int seal_packet(member_t *m, const unsigned char *header, int clear,
                       const unsigned char *plain, int plain_len, unsigned char *out) {
    unsigned char iv[12] = {0};
    uint32_t nonce = htonl(m->nonce++);
    memcpy(iv, &nonce, 4);
    int n, tail;
    memcpy(out, header, clear);
    EVP_EncryptInit_ex(m->seal_ctx, NULL, NULL, NULL, iv);
    EVP_EncryptUpdate(m->seal_ctx, NULL, &n, header, clear);
    EVP_EncryptUpdate(m->seal_ctx, out + clear, &n, plain, plain_len);
    EVP_EncryptFinal_ex(m->seal_ctx, out + clear + n, &tail);
    EVP_CIPHER_CTX_ctrl(m->seal_ctx, EVP_CTRL_GCM_GET_TAG, 16, out + clear + plain_len);
    memcpy(out + clear + plain_len + 16, &nonce, 4);
    return clear + plain_len + 16 + 4;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s PORT MEMBERS_FILE\n", argv[0]); return 2; }
    if (load_members(argv[2])) return 1;
    index_members();
    int sock = socket(AF_INET, SOCK_DGRAM, 0);
    int buffer = 4 << 20;
    setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
    setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);
    struct sockaddr_in bind_addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    bind_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(sock, (struct sockaddr *)&bind_addr, sizeof bind_addr)) { perror("bind"); return 1; }
    struct sigaction action = {.sa_handler = on_signal};
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    printf("ready %d members\n", member_count);
    fflush(stdout);

    unsigned char packet[MAX_PACKET], plain[MAX_PACKET], out[MAX_PACKET];
    while (!stopping) {
        struct sockaddr_in from;
        socklen_t from_len = sizeof from;
        int len = (int)recvfrom(sock, packet, sizeof packet, 0, (struct sockaddr *)&from, &from_len);
        if (len < 0) { if (errno == EINTR) continue; perror("recvfrom"); break; }
        in_packets++;
        if (len == 74 && packet[0] == 0 && packet[1] == 1) {
            uint32_t ssrc;
            memcpy(&ssrc, packet + 4, 4);
            member_t *m = by_ssrc(ntohl(ssrc));
            if (!m) { dropped++; continue; }
            m->addr = from;
            m->known = 1;
            unsigned char reply[74] = {0, 2, 0, 70};
            memcpy(reply + 4, &ssrc, 4);
            inet_ntop(AF_INET, &from.sin_addr, (char *)reply + 8, 64);
            memcpy(reply + 72, &from.sin_port, 2);
            sendto(sock, reply, 74, 0, (struct sockaddr *)&from, from_len);
            continue;
        }
        int clear = clear_size(packet, len);
        if (clear < 0 || (packet[1] >= 200 && packet[1] <= 204)) { dropped++; continue; }
        uint32_t ssrc;
        memcpy(&ssrc, packet + 8, 4);
        member_t *sender = by_ssrc(ntohl(ssrc));
        if (!sender) { dropped++; continue; }
        int plain_len = open_packet(sender, packet, len, clear, plain);
        if (plain_len < 0) { dropped++; continue; }
        sender->addr = from;
        sender->known = 1;
        int index = (int)(sender - members);
        for (int i = channel_first[index]; i < channel_first[index] + channel_count[index]; i++) {
            member_t *r = &members[i];
            if (r == sender || !r->known) continue;
            int size = seal_packet(r, packet, clear, plain, plain_len, out);
            sendto(sock, out, size, 0, (struct sockaddr *)&r->addr, sizeof r->addr);
            out_packets++;
        }
    }
    printf("in %llu out %llu dropped %llu\n", in_packets, out_packets, dropped);
    return 0;
}
