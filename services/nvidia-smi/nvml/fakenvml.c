/*
 * fake libnvidia-ml.so.1: NVIDIA's NVML C ABI over the fake GPU operator's node state.
 *
 * No model lives here (design principle 3). It first reads the node agents' snapshot of the
 * whole node ($FGO_STATE_DIR/nvml-node.snap, see node_snapshot()) and applies what differs per
 * container; failing that, the library runs the bundled nvidia-smi in its
 * hidden mode (`nvidia-smi --fgo-nvml-snapshot`, fgo_nvidia_smi/nvmlsnap.py), which samples the
 * visible GPUs with fgo_common.telemetry for the current and the next telemetry buckets, and
 * serves every call from the frame of the current 10-s bucket. The snapshot is kept in memory
 * and in a per-container cache file, so a process pays the exec only when no valid cache exists
 * (first call, bucket range used up, or topology.json replaced). docs/nvml.md has the design,
 * the covered functions and the measurements.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef FGO_NVML_REAL_HEADER
/* ABI check (tests/test_nvml_abi.py): every definition below must match NVIDIA's prototype. */
#define NVML_NO_UNVERSIONED_FUNC_DEFS
#include <nvml.h>
#else
#include "fgo_nvml.h"
#endif

#define API __attribute__((visibility("default")))
#define MAX_GPUS 32
#define MAX_MIGS 8
#define MAX_PROCS 32
#define DEFAULT_FRAMES "12"
#define MAX_FRAMES 400

extern char **environ;

typedef struct {
    unsigned int pid;
    unsigned long long used;
    unsigned int gi, ci;
    char name[64];
} proc_t;

typedef struct {
    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    unsigned int gi, ci;
    unsigned long long total, used, free, bar1_total, bar1_used;
    int nproc;
    proc_t procs[MAX_PROCS];
} mig_t;

typedef struct {
    int lost;
    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    char serial[NVML_DEVICE_SERIAL_BUFFER_SIZE];
    char bus_id[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
    unsigned int minor, pci_id, pci_sub, arch, cc_major, cc_minor, brand;
    unsigned long long total, reserved, used, free;
    unsigned int util, mem_util, enc, dec, temp, power, limit;
    unsigned long long energy;
    unsigned int sm_clock, mem_clock, max_sm, max_mem, video, pstate;
    unsigned long long reasons;
    int fan;
    int mig_capable, mig_enabled;
    unsigned int max_mig;
    unsigned long long bar1_total, bar1_used;
    unsigned int power_min, power_max, max_video, slowdown, shutdown;
    int ecc_supported;
    unsigned long long ecc[2][2]; /* [corrected, uncorrected][volatile, aggregate] */
    int nproc;
    proc_t procs[MAX_PROCS];
    int nmig;
    mig_t migs[MAX_MIGS];
} gpu_t;

/* A handle is the address of one of these: stable for the life of the process. */
struct nvmlDevice_st {
    int gpu;
    int mig; /* -1: the GPU itself */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int init_count;
static char *snap;           /* the snapshot text (owned) */
static size_t frame_off[MAX_FRAMES];
static long frame_bucket[MAX_FRAMES];
static int nframes;
static double bucket_seconds = 10.0;
static char driver_version[NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE];
static int cuda_version;
static struct stat topo_stat; /* topology.json when the snapshot was taken */
static long cur_bucket = -1;
static int cur_frame = -1;
static double last_check;
static int ngpus;
static gpu_t gpus[MAX_GPUS];
static struct nvmlDevice_st gpu_handles[MAX_GPUS];
static struct nvmlDevice_st mig_handles[MAX_GPUS][MAX_MIGS];
static char cache_path[512];

/* ---------------------------------------------------------------- time and environment */

static double now(void) {
    const char *pinned = getenv("FGO_SMI_TIME"); /* the nvidia-smi test hook, same meaning */
    if (pinned && *pinned) return strtod(pinned, NULL);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static const char *env_or(const char *name, const char *fallback) {
    const char *v = getenv(name);
    return (v && *v) ? v : fallback;
}

static void topology_path(char *out, size_t len) {
    snprintf(out, len, "%s/topology.json", env_or("FGO_STATE_DIR", "/run/fake-gpu-operator"));
}

static void stat_topology(struct stat *st) {
    char path[4096];
    topology_path(path, sizeof path);
    if (stat(path, st) != 0) memset(st, 0, sizeof *st);
}

static int same_file(const struct stat *a, const struct stat *b) {
    return a->st_ino == b->st_ino && a->st_size == b->st_size && a->st_dev == b->st_dev &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* The cache file: one per (user, environment that changes what nvidia-smi shows). */
static void make_cache_path(void) {
    const char *dir = getenv("FGO_NVML_CACHE_DIR");
    if (dir && !*dir) { /* set but empty: no cache file */
        cache_path[0] = 0;
        return;
    }
    if (!dir) dir = env_or("TMPDIR", "/tmp");
    static const char *keys[] = {"FGO_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "FGO_SEED",
                                 "FGO_STATE_DIR", "RUNAI_NUM_OF_GPUS", "HOSTNAME",
                                 "FGO_SMI_TIME", NULL};
    unsigned long long h = 1469598103934665603ULL; /* FNV-1a */
    for (int i = 0; keys[i]; i++) {
        const char *v = getenv(keys[i]);
        const char *p = v ? v : "\x01unset";
        for (; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
        h = (h ^ 0xff) * 1099511628211ULL;
    }
    snprintf(cache_path, sizeof cache_path, "%s/fgo-nvml-%u-%016llx.snap", dir,
             (unsigned)getuid(), h);
}

/* ---------------------------------------------------------------- snapshot text */

static char *read_all(int fd, size_t *len_out) {
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    if (!buf) return NULL;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) {
                free(buf);
                return NULL;
            }
            buf = bigger;
            cap *= 2;
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        len += (size_t)n;
    }
    buf[len] = 0;
    *len_out = len;
    return buf;
}

/* Runs nvidia-smi --fgo-nvml-snapshot; the caller owns the returned text. */
static char *exec_snapshot(void) {
    char smi[4096];
    const char *explicit_smi = getenv("FGO_NVML_SMI");
    if (explicit_smi && *explicit_smi)
        snprintf(smi, sizeof smi, "%s", explicit_smi);
    else
        snprintf(smi, sizeof smi, "%s/nvidia-smi",
                 env_or("FGO_NVIDIA_SMI_HOME", "/usr/local/fake-gpu"));
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    char *argv[] = {smi, "--fgo-nvml-snapshot", (char *)env_or("FGO_NVML_FRAMES", DEFAULT_FRAMES),
                    NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, smi, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        return NULL;
    }
    size_t len = 0;
    char *text = read_all(fds[0], &len);
    close(fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

/* Splits one line (modified in place) at tabs; returns the field count. */
static int split(char *line, char **fields, int max) {
    int n = 0;
    char *p = line;
    while (n < max) {
        fields[n++] = p;
        char *tab = strchr(p, '\t');
        if (!tab) break;
        *tab = 0;
        p = tab + 1;
    }
    return n;
}

static void copy_str(char *dst, size_t size, const char *src) {
    snprintf(dst, size, "%s", src);
}

static unsigned long long ull(const char *s) { return strtoull(s, NULL, 10); }
static unsigned int u32(const char *s) { return (unsigned int)strtoul(s, NULL, 10); }

/* Indexes the frames of `text`; 0 if the text is a complete snapshot of our format. */
static int index_snapshot(char *text) {
    if (strncmp(text, "FGO-NVML\t1\n", 11) != 0) return -1;
    size_t len = strlen(text);
    if (len < 3 || strcmp(text + len - 3, "\nE\n") != 0) return -1; /* truncated */
    int frames = 0;
    int have_driver = 0;
    char line[512];
    for (char *p = text; *p;) {
        char *end = strchr(p, '\n');
        if (!end) break;
        if (p[0] == 'F' && p[1] == '\t' && frames < MAX_FRAMES) {
            size_t n = (size_t)(end - p) < sizeof line - 1 ? (size_t)(end - p) : sizeof line - 1;
            memcpy(line, p, n);
            line[n] = 0;
            char *f[4];
            if (split(line, f, 4) < 3) return -1;
            frame_off[frames] = (size_t)(end + 1 - text);
            frame_bucket[frames] = strtol(f[2], NULL, 10);
            frames++;
        } else if (p[0] == 'D' && p[1] == '\t') {
            size_t n = (size_t)(end - p) < sizeof line - 1 ? (size_t)(end - p) : sizeof line - 1;
            memcpy(line, p, n);
            line[n] = 0;
            char *f[4];
            if (split(line, f, 4) < 3) return -1;
            copy_str(driver_version, sizeof driver_version, f[1]);
            cuda_version = atoi(f[2]);
            have_driver = 1;
        } else if (p[0] == 'T' && p[1] == '\t') {
            size_t n = (size_t)(end - p) < sizeof line - 1 ? (size_t)(end - p) : sizeof line - 1;
            memcpy(line, p, n);
            line[n] = 0;
            char *f[5];
            if (split(line, f, 5) >= 3 && strtod(f[2], NULL) > 0) bucket_seconds = strtod(f[2], NULL);
        }
        p = end + 1;
    }
    if (!frames || !have_driver) return -1;
    nframes = frames;
    return 0;
}

static void parse_frame(int k) {
    ngpus = 0;
    gpu_t *g = NULL;
    mig_t *m = NULL;
    char line[4096];
    for (char *p = snap + frame_off[k]; *p && !(p[0] == 'F' && p[1] == '\t') && p[0] != 'E';) {
        char *end = strchr(p, '\n');
        if (!end) break;
        size_t n = (size_t)(end - p) < sizeof line - 1 ? (size_t)(end - p) : sizeof line - 1;
        memcpy(line, p, n);
        line[n] = 0;
        p = end + 1;
        char *f[48];
        int nf = split(line, f, 48);
        if (f[0][0] == 'G' && nf >= 43 && ngpus < MAX_GPUS) {
            g = &gpus[ngpus++];
            memset(g, 0, sizeof *g);
            m = NULL;
            g->lost = atoi(f[1]);
            copy_str(g->uuid, sizeof g->uuid, f[2]);
            copy_str(g->name, sizeof g->name, f[3]);
            copy_str(g->serial, sizeof g->serial, f[4]);
            copy_str(g->bus_id, sizeof g->bus_id, f[5]);
            g->minor = u32(f[6]);
            g->pci_id = u32(f[7]);
            g->pci_sub = u32(f[8]);
            g->arch = u32(f[9]);
            g->cc_major = u32(f[10]);
            g->cc_minor = u32(f[11]);
            g->brand = u32(f[12]);
            g->total = ull(f[13]);
            g->reserved = ull(f[14]);
            g->used = ull(f[15]);
            g->free = ull(f[16]);
            g->util = u32(f[17]);
            g->mem_util = u32(f[18]);
            g->enc = u32(f[19]);
            g->dec = u32(f[20]);
            g->temp = u32(f[21]);
            g->power = u32(f[22]);
            g->limit = u32(f[23]);
            g->energy = ull(f[24]);
            g->sm_clock = u32(f[25]);
            g->mem_clock = u32(f[26]);
            g->max_sm = u32(f[27]);
            g->max_mem = u32(f[28]);
            g->video = u32(f[29]);
            g->pstate = u32(f[30]);
            g->reasons = ull(f[31]);
            g->fan = atoi(f[32]);
            g->mig_capable = atoi(f[33]);
            g->mig_enabled = atoi(f[34]);
            g->max_mig = u32(f[35]);
            g->bar1_total = ull(f[36]);
            g->bar1_used = ull(f[37]);
            g->power_min = u32(f[38]);
            g->power_max = u32(f[39]);
            g->max_video = u32(f[40]);
            g->slowdown = u32(f[41]);
            g->shutdown = u32(f[42]);
            if (nf >= 48) {
                g->ecc_supported = atoi(f[43]);
                g->ecc[0][0] = ull(f[44]);
                g->ecc[1][0] = ull(f[45]);
                g->ecc[0][1] = ull(f[46]);
                g->ecc[1][1] = ull(f[47]);
            }
        } else if (f[0][0] == 'M' && nf >= 11 && g && g->nmig < MAX_MIGS) {
            m = &g->migs[g->nmig++];
            memset(m, 0, sizeof *m);
            copy_str(m->uuid, sizeof m->uuid, f[2]);
            copy_str(m->name, sizeof m->name, f[3]);
            m->gi = u32(f[4]);
            m->ci = u32(f[5]);
            m->total = ull(f[6]);
            m->used = ull(f[7]);
            m->free = ull(f[8]);
            m->bar1_total = ull(f[9]);
            m->bar1_used = ull(f[10]);
        } else if (f[0][0] == 'P' && nf >= 6 && g) {
            int *count = m ? &m->nproc : &g->nproc;
            proc_t *procs = m ? m->procs : g->procs;
            if (*count < MAX_PROCS) {
                proc_t *pr = &procs[(*count)++];
                pr->pid = u32(f[1]);
                pr->used = ull(f[2]);
                pr->gi = u32(f[3]);
                pr->ci = u32(f[4]);
                copy_str(pr->name, sizeof pr->name, f[5]);
            }
        }
    }
    for (int i = 0; i < MAX_GPUS; i++) {
        gpu_handles[i].gpu = i;
        gpu_handles[i].mig = -1;
        for (int j = 0; j < MAX_MIGS; j++) {
            mig_handles[i][j].gpu = i;
            mig_handles[i][j].mig = j;
        }
    }
}

static int frame_for(long bucket) {
    for (int k = 0; k < nframes; k++)
        if (frame_bucket[k] == bucket) return k;
    return -1;
}

/* Takes ownership of text; 0 on success (the old snapshot is kept on failure). */
static int adopt(char *text, const struct stat *st) {
    if (!text) return -1;
    char old_driver[sizeof driver_version];
    memcpy(old_driver, driver_version, sizeof old_driver);
    int old_cuda = cuda_version;
    size_t old_off[MAX_FRAMES];
    long old_bucket[MAX_FRAMES];
    int old_n = nframes;
    memcpy(old_off, frame_off, sizeof old_off);
    memcpy(old_bucket, frame_bucket, sizeof old_bucket);
    if (index_snapshot(text) != 0) {
        memcpy(driver_version, old_driver, sizeof old_driver);
        cuda_version = old_cuda;
        memcpy(frame_off, old_off, sizeof old_off);
        memcpy(frame_bucket, old_bucket, sizeof old_bucket);
        nframes = old_n;
        free(text);
        return -1;
    }
    free(snap);
    snap = text;
    topo_stat = *st;
    cur_frame = -1;
    cur_bucket = -1;
    return 0;
}

static char *read_cache(const struct stat *st) {
    if (!cache_path[0]) return NULL;
    int fd = open(cache_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    struct stat own;
    /* Only our own, private file: never a file another user planted in /tmp. */
    if (fstat(fd, &own) != 0 || own.st_uid != getuid() || (own.st_mode & 077)) {
        close(fd);
        return NULL;
    }
    size_t len = 0;
    char *text = read_all(fd, &len);
    close(fd);
    if (!text) return NULL;
    char expect[160];
    snprintf(expect, sizeof expect, "S\t%llu\t%llu\t%lld\t%ld\n", (unsigned long long)st->st_ino,
             (unsigned long long)st->st_size, (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
    size_t n = strlen(expect);
    if (len < n || memcmp(text, expect, n) != 0) {
        free(text);
        return NULL;
    }
    memmove(text, text + n, len - n + 1);
    return text;
}

static void write_cache(const char *text, const struct stat *st) {
    if (!cache_path[0]) return;
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", cache_path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return;
    FILE *out = fdopen(fd, "w");
    if (!out) {
        close(fd);
        unlink(tmp);
        return;
    }
    fprintf(out, "S\t%llu\t%llu\t%lld\t%ld\n", (unsigned long long)st->st_ino,
            (unsigned long long)st->st_size, (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
    fputs(text, out);
    if (fclose(out) != 0 || rename(tmp, cache_path) != 0) unlink(tmp);
}

/* ---------------------------------------------------------------- the node agents' snapshot */

/*
 * `$FGO_STATE_DIR/nvml-node.snap` (FGO-NVML-NODE 1, nvmlsnap.render_node): the whole node's
 * frames, written ahead of time by the node agents with the same code as the exec path. What
 * differs per container is applied here, exactly as fgo_nvidia_smi.state does it: the
 * NVIDIA_VISIBLE_DEVICES selection (parse_visible) and renumbering, a Run:ai fraction's memory
 * (GpuView.memory_* and _within), the pod's own process name (own_process_name). The result is
 * the text the exec path would print, so everything after it is shared. Whatever this code
 * cannot reproduce exactly (a fractional pod found by its UID, a non-ASCII variable, a seed or
 * fraction spelled in a way only Python parses, a file of another topology.json or seed)
 * returns NULL: the caller then runs nvidia-smi.
 */
#define NODE_FILE "nvml-node.snap"
#define MIB 1048576LL

typedef struct {
    int index; /* record index */
    char *uuid;
    int nmig;
    char *migs[MAX_MIGS]; /* MIG UUIDs in (gi, ci) order */
    int whole, has_subset;
    unsigned mask; /* visible MIG positions when has_subset */
} vis_t;

/* Trims spaces in place; -1 if s has a byte Python's strip/upper would treat differently. */
static int ascii_trim(char **s) {
    for (unsigned char *p = (unsigned char *)*s; *p; p++)
        if (*p < 0x20 || *p >= 0x7f) return -1;
    while (**s == ' ') (*s)++;
    size_t n = strlen(*s);
    while (n && (*s)[n - 1] == ' ') (*s)[--n] = 0;
    return 0;
}

static int all_digits(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9') return 0;
    return 1;
}

/* Decimal value of a digit string, -1 when it cannot be a GPU/MIG index. */
static long small_int(const char *s) {
    while (*s == '0' && s[1]) s++;
    if (strlen(s) > 9) return -1;
    return strtol(s, NULL, 10);
}

static void mark_mig(vis_t *g, const char *uuid) {
    for (int j = 0; j < g->nmig; j++)
        if (strcasecmp(g->migs[j], uuid) == 0) g->mask |= 1u << j;
    g->has_subset = 1;
}

/* fgo_nvidia_smi.state.parse_visible over the V lines; -1: leave it to nvidia-smi. */
static int select_visible(vis_t *v, int n, const char *env_spec) {
    for (int i = 0; i < n; i++) v[i].whole = v[i].has_subset = 0, v[i].mask = 0;
    if (!env_spec) {
        for (int i = 0; i < n; i++) v[i].whole = 1;
        return 0;
    }
    char *copy = strdup(env_spec), *text = copy;
    if (!copy) return -1;
    if (ascii_trim(&text) != 0) {
        free(copy);
        return -1;
    }
    if (strcasecmp(text, "all") == 0) {
        for (int i = 0; i < n; i++) v[i].whole = 1;
        free(copy);
        return 0;
    }
    for (char *save = NULL, *tok = text;; tok = NULL) {
        /* strtok would merge empty tokens, which are skipped anyway */
        char *token = strtok_r(tok, ",", &save);
        if (!token) break;
        ascii_trim(&token);
        if (!*token || strcasecmp(token, "none") == 0 || strcasecmp(token, "void") == 0) continue;
        int done = 0;
        for (int i = n - 1; i >= 0 && !done; i--) /* Python's dict: the last GPU wins */
            if (strcasecmp(v[i].uuid, token) == 0) v[i].whole = 1, done = 1;
        for (int i = n - 1; i >= 0 && !done; i--)
            for (int j = 0; j < v[i].nmig && !done; j++)
                if (strcasecmp(v[i].migs[j], token) == 0) mark_mig(&v[i], token), done = 1;
        if (done) continue;
        if (all_digits(token)) {
            long idx = small_int(token);
            for (int i = 0; i < n && !done; i++)
                if (v[i].index == idx) v[i].whole = 1, done = 1;
            if (done) continue;
        }
        char *colon = strchr(token, ':');
        if (!colon) continue;
        *colon = 0;
        const char *gpu_part = token, *mig_part = colon + 1;
        if (!all_digits(gpu_part) || !all_digits(mig_part)) continue;
        long gi = small_int(gpu_part), pos = small_int(mig_part);
        for (int i = n - 1; i >= 0; i--)
            if (v[i].index == gi) {
                if (pos >= 0 && pos < v[i].nmig) mark_mig(&v[i], v[i].migs[pos]);
                break;
            }
    }
    free(copy);
    return 0;
}

/* RUNAI_NUM_OF_GPUS / GPU_PORTION as Settings.from_env reads them; -1: leave it to Python. */
static int env_fraction(double *fraction) {
    static const char *names[] = {"RUNAI_NUM_OF_GPUS", "GPU_PORTION"};
    *fraction = 1.0;
    for (int i = 0; i < 2; i++) {
        const char *raw = getenv(names[i]);
        if (!raw) continue;
        char buf[64], *s = buf;
        if (strlen(raw) >= sizeof buf) return -1;
        strcpy(buf, raw);
        if (ascii_trim(&s) != 0) return -1;
        if (!*s) continue;
        if (strspn(s, "0123456789.eE+-") != strlen(s)) return -1;
        char *end;
        double value = strtod(s, &end);
        if (*end) return -1;
        if (value > 0.0 && value < 1.0) {
            *fraction = value;
            return 0;
        }
        if (value >= 1.0) return 0;
    }
    return 0;
}

/* FGO_SEED as an integer; -1 when only Python would parse it. */
static int env_seed(long long *seed) {
    const char *raw = getenv("FGO_SEED");
    char buf[32], *s = buf;
    if (!raw) raw = "0";
    if (strlen(raw) >= sizeof buf) return -1;
    strcpy(buf, raw);
    if (ascii_trim(&s) != 0) return -1;
    if (!*s) s = "0";
    const char *digits = (*s == '+' || *s == '-') ? s + 1 : s;
    if (!all_digits(digits) || strlen(digits) > 18) return -1;
    *seed = strtoll(s, NULL, 10);
    return 0;
}

/* The container's own process name (own_process_name); "" when none, NULL: not ASCII. */
static const char *own_name(char *buf, size_t size) {
    buf[0] = 0;
    int fd = open("/proc/1/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return buf;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0) n = 0;
    buf[n] = 0; /* argv[0] ends at the first NUL */
    char *s = buf;
    if (ascii_trim(&s) != 0) return NULL;
    memmove(buf, s, strlen(s) + 1);
    return buf;
}

static int env_set(const char *name) {
    const char *v = getenv(name);
    if (!v) return 0;
    while (*v == ' ' || (*v >= '\t' && *v <= '\r')) v++;
    return *v != 0;
}

/* Lines of `text` (modified in place: '\n' -> 0). */
static int lines_of(char *text, char ***out) {
    int cap = 1024, n = 0;
    char **lines = malloc(sizeof *lines * (size_t)cap);
    if (!lines) return -1;
    for (char *p = text; *p;) {
        char *end = strchr(p, '\n');
        if (!end) break;
        *end = 0;
        if (n == cap) {
            char **bigger = realloc(lines, sizeof *lines * (size_t)(cap *= 2));
            if (!bigger) {
                free(lines);
                return -1;
            }
            lines = bigger;
        }
        lines[n++] = p;
        p = end + 1;
    }
    *out = lines;
    return n;
}

/* Writes fields [0, n) of a split line. */
static void put_fields(FILE *out, char **f, int n) {
    for (int i = 0; i < n; i++) fprintf(out, i ? "\t%s" : "%s", f[i]);
    fputc('\n', out);
}

typedef struct {
    const char *host, *own; /* own: NULL until read */
    char own_buf[256];
    int own_bad;
} names_t;

/* A P line of the node file, as this container's nvidia-smi would print it. */
static int put_proc(FILE *out, char *line, const long long *clipped, int nclipped, names_t *nm) {
    char *f[9];
    if (split(line, f, 9) < 8) return -1;
    long rank = strtol(f[7], NULL, 10);
    char used[32];
    if (clipped) { /* a Run:ai fraction: the model's memory clipped to the fraction's Used */
        snprintf(used, sizeof used, "%lld", rank >= 0 && rank < nclipped ? clipped[rank] * MIB : 0);
        f[2] = used;
    }
    if (*f[6] && strcmp(f[6], nm->host) == 0) {
        if (!nm->own && !nm->own_bad) {
            nm->own = own_name(nm->own_buf, sizeof nm->own_buf);
            nm->own_bad = nm->own == NULL;
        }
        if (nm->own_bad) return -1;
        if (*nm->own) f[5] = (char *)nm->own;
    }
    put_fields(out, f, 6);
    return 0;
}

/* Reads and applies the node file; NULL when it cannot serve this container exactly. */
static char *node_snapshot(const struct stat *topo) {
    const char *spec = getenv("FGO_VISIBLE_DEVICES");
    if (!spec) spec = getenv("NVIDIA_VISIBLE_DEVICES");
    if (!spec && (env_set("FGO_POD_UID") || env_set("POD_UUID"))) return NULL; /* select_by_pod */
    double fraction;
    long long seed;
    if (env_fraction(&fraction) != 0 || env_seed(&seed) != 0) return NULL;
    const char *pinned = getenv("FGO_SMI_TIME"); /* nvidia-smi refuses a bad one: let it */
    if (pinned && *pinned) {
        char *end;
        strtod(pinned, &end);
        while (*end == ' ') end++;
        if (*end || strspn(pinned, " 0123456789.eE+-") != strlen(pinned)) return NULL;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/" NODE_FILE, env_or("FGO_STATE_DIR", "/run/fake-gpu-operator"));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    size_t len = 0;
    char *text = read_all(fd, &len);
    close(fd);
    if (!text) return NULL;
    char **lines = NULL;
    int n = lines_of(text, &lines);
    char *result = NULL;
    size_t result_len = 0;
    FILE *out = NULL;
    vis_t vis[MAX_GPUS];
    int nvis = 0;
    char expect[160];
    snprintf(expect, sizeof expect, "S\t%llu\t%llu\t%lld\t%ld", (unsigned long long)topo->st_ino,
             (unsigned long long)topo->st_size, (long long)topo->st_mtim.tv_sec,
             topo->st_mtim.tv_nsec);
    char seed_line[48];
    snprintf(seed_line, sizeof seed_line, "K\t%lld", seed);
    if (n < 6 || strcmp(lines[0], "FGO-NVML-NODE\t1") != 0 || strcmp(lines[n - 1], "E") != 0 ||
        strcmp(lines[1], expect) != 0 || strcmp(lines[2], seed_line) != 0 ||
        strncmp(lines[3], "T\t", 2) != 0 || strncmp(lines[4], "D\t", 2) != 0)
        goto done;
    int i = 5;
    for (; i < n && lines[i][0] == 'V'; i++) {
        if (nvis == MAX_GPUS) goto done;
        char *f[3 + MAX_MIGS + 1];
        int nf = split(lines[i], f, 3 + MAX_MIGS + 1);
        if (nf < 3 || nf > 3 + MAX_MIGS) goto done; /* more MIG devices than we serve */
        vis_t *v = &vis[nvis++];
        v->index = atoi(f[1]);
        v->uuid = f[2];
        v->nmig = nf - 3;
        for (int j = 0; j < v->nmig; j++) v->migs[j] = f[3 + j];
        char *check = f[2];
        if (ascii_trim(&check) != 0) goto done;
    }
    if (select_visible(vis, nvis, spec) != 0) goto done;
    char host[256];
    const char *env_host = getenv("HOSTNAME");
    if (env_host && *env_host)
        snprintf(host, sizeof host, "%s", env_host);
    else if (gethostname(host, sizeof host) != 0)
        host[0] = 0;
    names_t nm = {.host = host};
    out = open_memstream(&result, &result_len);
    if (!out) goto done;
    fprintf(out, "FGO-NVML\t1\n%s\n%s\n", lines[3], lines[4]);
    int gpu = -1, ok = 1;
    long long clipped[MAX_PROCS];
    int nclipped = 0, scaled = 0;
    while (i < n - 1 && ok) {
        char *line = lines[i];
        if (line[0] == 'F') {
            fprintf(out, "%s\n", line);
            gpu = -1;
            i++;
            continue;
        }
        if (line[0] != 'G') {
            ok = 0;
            break;
        }
        /* One GPU block: G, its own P lines, then M + P blocks. */
        int end = i + 1;
        while (end < n - 1 && (lines[end][0] == 'P' || lines[end][0] == 'M')) end++;
        gpu++;
        char *f[50];
        int nf = split(line, f, 50);
        if (gpu >= nvis || nf < 49 || strcmp(f[2], vis[gpu].uuid) != 0) {
            ok = 0;
            break;
        }
        vis_t *v = &vis[gpu];
        int mig_enabled = atoi(f[34]);
        if (!v->whole && !v->has_subset) {
            i = end;
            continue;
        }
        /* GpuView.memory_*: the fraction scales total and reserved, caps used. */
        long long total = (long long)(ull(f[13]) / MIB), reserved = (long long)(ull(f[14]) / MIB);
        long long used = (long long)(ull(f[15]) / MIB);
        if (total > (1LL << 40) || reserved > (1LL << 40) || used > (1LL << 40)) {
            ok = 0; /* not a GPU's memory: a corrupt file */
            break;
        }
        scaled = fraction < 1.0;
        if (scaled) {
            long long fb_reserved = reserved;
            total = (long long)((double)total * fraction + 1e-6);
            reserved = (long long)((double)fb_reserved * fraction);
            if (used > total - reserved) used = total - reserved;
        }
        long long free_mib = total - reserved - used;
        if (free_mib < 0) free_mib = 0;
        char mem[4][32];
        snprintf(mem[0], 32, "%lld", total * MIB);
        snprintf(mem[1], 32, "%lld", reserved * MIB);
        snprintf(mem[2], 32, "%lld", used * MIB);
        snprintf(mem[3], 32, "%lld", free_mib * MIB);
        for (int k = 0; k < 4; k++) f[13 + k] = mem[k];
        /* _within: each pod's model memory, in the model's order, up to Used. */
        nclipped = 0;
        long long left = used > 0 ? used : 0;
        for (char *p = f[48], *save = NULL, *tok; (tok = strtok_r(p, ",", &save)); p = NULL) {
            if (nclipped == MAX_PROCS) break;
            long long mib = atoll(tok);
            if (mib < 0 || mib > (1LL << 40)) mib = 0;
            clipped[nclipped] = mib < left ? mib : left;
            left -= clipped[nclipped++];
        }
        put_fields(out, f, 48);
        if (mig_enabled) {
            /* all_processes: the visible MIG devices' processes, in MIG order */
            int keep = 0;
            for (int k = i + 1; k < end && ok; k++) {
                if (lines[k][0] == 'M') {
                    char copy[128];
                    snprintf(copy, sizeof copy, "%s", lines[k]);
                    char *mf[4];
                    int pos = split(copy, mf, 4) >= 2 ? atoi(mf[1]) : -1;
                    keep = v->whole || (pos >= 0 && pos < 32 && (v->mask >> pos & 1u));
                } else if (keep) {
                    char copy[1024];
                    snprintf(copy, sizeof copy, "%s", lines[k]);
                    if (put_proc(out, copy, NULL, 0, &nm) != 0) ok = 0;
                }
            }
        }
        int keep = !mig_enabled && v->whole; /* a whole GPU's own processes */
        for (int k = i + 1; k < end && ok; k++) {
            if (lines[k][0] == 'M') {
                char *mf[4];
                char copy[1024];
                snprintf(copy, sizeof copy, "%s", lines[k]);
                int pos = split(copy, mf, 4) >= 2 ? atoi(mf[1]) : -1;
                keep = mig_enabled && (v->whole || (pos >= 0 && pos < 32 && (v->mask >> pos & 1u)));
                if (keep) fprintf(out, "%s\n", lines[k]);
            } else if (keep) {
                if (put_proc(out, lines[k], !mig_enabled && scaled ? clipped : NULL, nclipped,
                             &nm) != 0)
                    ok = 0;
            }
        }
        i = end;
    }
    fputs("E\n", out);
    if (fclose(out) != 0) ok = 0;
    out = NULL;
    if (!ok || i != n - 1) {
        free(result);
        result = NULL;
    }
done:
    if (out) {
        fclose(out);
        free(result);
        result = NULL;
    }
    free(lines);
    free(text);
    return result;
}

/* A snapshot whose frames cover `bucket`: the cache file, else the node agents' file, else a
 * fresh exec. */
static int load(long bucket, const struct stat *st) {
    char *text = read_cache(st);
    if (text && adopt(text, st) == 0 && frame_for(bucket) >= 0) return 0;
    text = node_snapshot(st);
    if (text && adopt(text, st) == 0 && frame_for(bucket) >= 0) return 0;
    text = exec_snapshot();
    if (!text) return -1;
    char *copy = strdup(text);
    if (adopt(text, st) != 0) {
        free(copy);
        return -1;
    }
    if (copy) {
        write_cache(copy, st);
        free(copy);
    }
    return 0;
}

/* Brings the current frame up to date; caller holds the lock. */
static nvmlReturn_t refresh(void) {
    if (init_count <= 0) return NVML_ERROR_UNINITIALIZED;
    double t = now();
    long bucket = (long)floor(t / bucket_seconds);
    double mono = monotonic();
    int stale = 0;
    if (mono - last_check >= 1.0 || bucket != cur_bucket) {
        struct stat st;
        stat_topology(&st);
        last_check = mono;
        if (!same_file(&st, &topo_stat) || frame_for(bucket) < 0) {
            stale = 1;
            if (load(bucket, &st) != 0) topo_stat = st; /* keep serving the last good frames */
        }
    }
    if (bucket != cur_bucket || stale || cur_frame < 0) {
        int k = frame_for(bucket);
        if (k < 0) k = bucket < frame_bucket[0] ? 0 : nframes - 1; /* nearest we have */
        parse_frame(k);
        cur_frame = k;
        cur_bucket = bucket;
    }
    return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- init and system */

static nvmlReturn_t init_impl(void) {
    pthread_mutex_lock(&lock);
    if (init_count > 0) {
        init_count++;
        pthread_mutex_unlock(&lock);
        return NVML_SUCCESS;
    }
    make_cache_path();
    struct stat st;
    stat_topology(&st);
    if (st.st_ino == 0) { /* no node state: a node without the driver */
        pthread_mutex_unlock(&lock);
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    double t = now();
    bucket_seconds = 10.0;
    if (load((long)floor(t / bucket_seconds), &st) != 0) {
        free(snap);
        snap = NULL;
        nframes = 0;
        pthread_mutex_unlock(&lock);
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    last_check = monotonic();
    init_count = 1;
    cur_bucket = -1;
    nvmlReturn_t rc = refresh();
    pthread_mutex_unlock(&lock);
    return rc;
}

API nvmlReturn_t nvmlInit_v2(void) { return init_impl(); }
API nvmlReturn_t nvmlInit(void) { return init_impl(); }
API nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags; /* NVML_INIT_FLAG_NO_GPUS / NO_ATTACH change nothing here */
    return init_impl();
}

API nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&lock);
    if (init_count <= 0) {
        pthread_mutex_unlock(&lock);
        return NVML_ERROR_UNINITIALIZED;
    }
    if (--init_count == 0) {
        free(snap);
        snap = NULL;
        nframes = 0;
        ngpus = 0;
        cur_frame = -1;
        cur_bucket = -1;
    }
    pthread_mutex_unlock(&lock);
    return NVML_SUCCESS;
}

API const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_INSUFFICIENT_POWER: return "Insufficient External Power";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_IRQ_ISSUE: return "Interrupt Request Issue";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_CORRUPTED_INFOROM: return "Corrupted infoROM";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
    case NVML_ERROR_OPERATING_SYSTEM: return "The operating system has blocked the request.";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_NO_DATA: return "No data";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    case NVML_ERROR_DEPRECATED: return "Deprecated";
    case NVML_ERROR_NOT_READY: return "Not Ready";
    case NVML_ERROR_GPU_NOT_FOUND: return "GPU not found";
    case NVML_ERROR_INVALID_STATE: return "Invalid state";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t put_str(char *dst, unsigned int len, const char *src) {
    if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = init_count > 0 ? put_str(version, length, driver_version)
                                     : NVML_ERROR_UNINITIALIZED;
    pthread_mutex_unlock(&lock);
    return rc;
}

API nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = NVML_ERROR_UNINITIALIZED;
    if (init_count > 0) {
        char text[NVML_SYSTEM_NVML_VERSION_BUFFER_SIZE + 16];
        /* NVML prints "<CUDA major>.<driver version>", e.g. 13.580.159.04 */
        snprintf(text, sizeof text, "%d.%s", cuda_version / 1000, driver_version);
        rc = put_str(version, length, text);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

static nvmlReturn_t cuda_impl(int *v) {
    if (!v) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = NVML_ERROR_UNINITIALIZED;
    if (init_count > 0) {
        *v = cuda_version;
        rc = NVML_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}
API nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) { return cuda_impl(v); }
API nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) { return cuda_impl(v); }

API nvmlReturn_t nvmlSystemGetProcessName(unsigned int pid, char *name, unsigned int length) {
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = refresh();
    if (rc == NVML_SUCCESS) {
        rc = NVML_ERROR_NOT_FOUND;
        for (int i = 0; i < ngpus && rc == NVML_ERROR_NOT_FOUND; i++) {
            for (int j = 0; j < gpus[i].nproc; j++)
                if (gpus[i].procs[j].pid == pid) {
                    rc = put_str(name, length, gpus[i].procs[j].name);
                    break;
                }
        }
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

/* ---------------------------------------------------------------- handles */

static nvmlReturn_t count_impl(unsigned int *count) {
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = refresh();
    if (rc == NVML_SUCCESS) *count = (unsigned int)ngpus;
    pthread_mutex_unlock(&lock);
    return rc;
}
API nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) { return count_impl(count); }
API nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return count_impl(count); }

static nvmlReturn_t by_index(unsigned int index, nvmlDevice_t *device) {
    if (!device) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = refresh();
    if (rc == NVML_SUCCESS) {
        if (index >= (unsigned int)ngpus)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (gpus[index].lost)
            rc = NVML_ERROR_GPU_IS_LOST;
        else
            *device = &gpu_handles[index];
    }
    pthread_mutex_unlock(&lock);
    return rc;
}
API nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) {
    return by_index(i, d);
}
API nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, nvmlDevice_t *d) {
    return by_index(i, d);
}

API nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = refresh();
    if (rc == NVML_SUCCESS) {
        rc = NVML_ERROR_NOT_FOUND;
        for (int i = 0; i < ngpus && rc == NVML_ERROR_NOT_FOUND; i++) {
            if (strcasecmp(gpus[i].uuid, uuid) == 0) {
                rc = gpus[i].lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
                if (rc == NVML_SUCCESS) *device = &gpu_handles[i];
            }
            for (int j = 0; j < gpus[i].nmig && rc == NVML_ERROR_NOT_FOUND; j++)
                if (strcasecmp(gpus[i].migs[j].uuid, uuid) == 0) {
                    rc = gpus[i].lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
                    if (rc == NVML_SUCCESS) *device = &mig_handles[i][j];
                }
        }
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

/* Bus ids compare by value: "0000:18:00.0", "00000000:18:00.0" and lower case all match. */
static int parse_bus(const char *s, unsigned *dom, unsigned *bus, unsigned *dev, unsigned *fn) {
    *fn = 0;
    if (sscanf(s, "%x:%x:%x.%x", dom, bus, dev, fn) >= 3) return 0;
    *dom = 0;
    if (sscanf(s, "%x:%x.%x", bus, dev, fn) >= 2) return 0;
    return -1;
}

static nvmlReturn_t by_bus(const char *bus_id, nvmlDevice_t *device) {
    if (!bus_id || !device) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned a[4], b[4];
    if (parse_bus(bus_id, &a[0], &a[1], &a[2], &a[3]) != 0) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = refresh();
    if (rc == NVML_SUCCESS) {
        rc = NVML_ERROR_NOT_FOUND;
        for (int i = 0; i < ngpus; i++) {
            if (parse_bus(gpus[i].bus_id, &b[0], &b[1], &b[2], &b[3]) == 0 &&
                memcmp(a, b, sizeof a) == 0) {
                rc = gpus[i].lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
                if (rc == NVML_SUCCESS) *device = &gpu_handles[i];
                break;
            }
        }
    }
    pthread_mutex_unlock(&lock);
    return rc;
}
API nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *b, nvmlDevice_t *d) {
    return by_bus(b, d);
}
API nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char *b, nvmlDevice_t *d) {
    return by_bus(b, d);
}

API nvmlReturn_t nvmlDeviceGetHandleBySerial(const char *serial, nvmlDevice_t *device) {
    if (!serial || !device) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = refresh();
    if (rc == NVML_SUCCESS) {
        rc = NVML_ERROR_NOT_FOUND;
        for (int i = 0; i < ngpus; i++)
            if (strcmp(gpus[i].serial, serial) == 0) {
                rc = gpus[i].lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
                if (rc == NVML_SUCCESS) *device = &gpu_handles[i];
                break;
            }
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

/*
 * Every per-device call: lock, refresh, resolve the handle to (GPU, MIG or NULL), run BODY with
 * `g` and `m` set, unlock. A handle this library did not hand out is INVALID_ARGUMENT; a GPU that
 * vanished from the snapshot or carries a lost-GPU fault is GPU_IS_LOST.
 */
static nvmlReturn_t resolve(nvmlDevice_t device, gpu_t **g, mig_t **m) {
    nvmlReturn_t rc = refresh();
    if (rc != NVML_SUCCESS) return rc;
    struct nvmlDevice_st *h = device;
    int is_gpu = h >= &gpu_handles[0] && h < &gpu_handles[MAX_GPUS];
    int is_mig = h >= &mig_handles[0][0] && h < &mig_handles[0][0] + MAX_GPUS * MAX_MIGS;
    if (!h || (!is_gpu && !is_mig)) return NVML_ERROR_INVALID_ARGUMENT;
    if (h->gpu >= ngpus || gpus[h->gpu].lost) return NVML_ERROR_GPU_IS_LOST;
    *g = &gpus[h->gpu];
    *m = NULL;
    if (h->mig >= 0) {
        if (h->mig >= (*g)->nmig) return NVML_ERROR_NOT_FOUND;
        *m = &(*g)->migs[h->mig];
    }
    return NVML_SUCCESS;
}

#define DEVICE_CALL(device, ...)                           \
    do {                                                   \
        gpu_t *g;                                          \
        mig_t *m;                                          \
        pthread_mutex_lock(&lock);                         \
        nvmlReturn_t rc = resolve((device), &g, &m);       \
        if (rc == NVML_SUCCESS) {                          \
            __VA_ARGS__                                    \
        }                                                  \
        pthread_mutex_unlock(&lock);                       \
        return rc;                                         \
    } while (0)

/* A value only a whole GPU reports (NVML: NOT_SUPPORTED on a MIG device handle). */
#define GPU_ONLY(out, value)                               \
    DEVICE_CALL(device, {                                  \
        if (!(out)) rc = NVML_ERROR_INVALID_ARGUMENT;      \
        else if (m) rc = NVML_ERROR_NOT_SUPPORTED;         \
        else *(out) = (value);                             \
    })

/* ---------------------------------------------------------------- identity */

API nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    DEVICE_CALL(device, { rc = put_str(name, length, m ? m->name : g->name); });
}

API nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    DEVICE_CALL(device, { rc = put_str(uuid, length, m ? m->uuid : g->uuid); });
}

API nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t device, char *serial, unsigned int length) {
    DEVICE_CALL(device, { rc = put_str(serial, length, g->serial); });
}

API nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    GPU_ONLY(index, (unsigned int)(g - gpus));
}

API nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minor) {
    GPU_ONLY(minor, g->minor);
}

API nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t device, nvmlDeviceArchitecture_t *arch) {
    DEVICE_CALL(device, {
        if (!arch) rc = NVML_ERROR_INVALID_ARGUMENT;
        else *arch = g->arch;
    });
}

API nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
    DEVICE_CALL(device, {
        if (!major || !minor) rc = NVML_ERROR_INVALID_ARGUMENT;
        else {
            *major = (int)g->cc_major;
            *minor = (int)g->cc_minor;
        }
    });
}

API nvmlReturn_t nvmlDeviceGetBrand(nvmlDevice_t device, nvmlBrandType_t *brand) {
    DEVICE_CALL(device, {
        if (!brand) rc = NVML_ERROR_INVALID_ARGUMENT;
        else *brand = (nvmlBrandType_t)g->brand;
    });
}

static nvmlReturn_t pci_impl(nvmlDevice_t device, nvmlPciInfo_t *pci, int legacy_only) {
    DEVICE_CALL(device, {
        unsigned dom, bus, dev, fn;
        if (!pci) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (parse_bus(g->bus_id, &dom, &bus, &dev, &fn) != 0) rc = NVML_ERROR_UNKNOWN;
        else {
            snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.0", dom, bus, dev);
            pci->domain = dom;
            pci->bus = bus;
            pci->device = dev;
            pci->pciDeviceId = g->pci_id;
            /* The oldest layout ends after pciDeviceId + 4 reserved words: write no further. */
            if (!legacy_only) {
                pci->pciSubSystemId = g->pci_sub;
                snprintf(pci->busId, sizeof pci->busId, "%08X:%02X:%02X.0", dom, bus, dev);
            }
        }
    });
}
API nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *p) { return pci_impl(d, p, 0); }
API nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t d, nvmlPciInfo_t *p) { return pci_impl(d, p, 0); }
API nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t d, nvmlPciInfo_t *p) { return pci_impl(d, p, 1); }

/* ---------------------------------------------------------------- memory and utilisation */

API nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    DEVICE_CALL(device, {
        if (!memory) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (m) {
            memory->total = m->total;
            memory->free = m->free;
            memory->used = m->used;
        } else {
            /* v1: used includes the driver's reservation (nvml.h). */
            memory->total = g->total;
            memory->free = g->free;
            memory->used = g->used + g->reserved;
        }
    });
}

API nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    DEVICE_CALL(device, {
        if (!memory) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (memory->version != nvmlMemory_v2) rc = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
        else if (m) {
            memory->total = m->total;
            memory->reserved = 0;
            memory->free = m->free;
            memory->used = m->used;
        } else {
            memory->total = g->total;
            memory->reserved = g->reserved;
            memory->free = g->free;
            memory->used = g->used;
        }
    });
}

API nvmlReturn_t nvmlDeviceGetBAR1MemoryInfo(nvmlDevice_t device, nvmlBAR1Memory_t *bar1) {
    DEVICE_CALL(device, {
        unsigned long long total = m ? m->bar1_total : g->bar1_total;
        unsigned long long used = m ? m->bar1_used : g->bar1_used;
        if (!bar1) rc = NVML_ERROR_INVALID_ARGUMENT;
        else {
            bar1->bar1Total = total;
            bar1->bar1Used = used > total ? total : used;
            bar1->bar1Free = total - bar1->bar1Used;
        }
    });
}

API nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *util) {
    DEVICE_CALL(device, {
        if (!util) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (m || g->mig_enabled) rc = NVML_ERROR_NOT_SUPPORTED; /* as real MIG does */
        else {
            util->gpu = g->util;
            util->memory = g->mem_util;
        }
    });
}

static nvmlReturn_t codec_impl(nvmlDevice_t device, unsigned int *util, unsigned int *period,
                               int decoder) {
    DEVICE_CALL(device, {
        if (!util || !period) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (m || g->mig_enabled) rc = NVML_ERROR_NOT_SUPPORTED;
        else {
            *util = decoder ? g->dec : g->enc;
            *period = 167000; /* the driver's sampling period, us */
        }
    });
}
API nvmlReturn_t nvmlDeviceGetEncoderUtilization(nvmlDevice_t d, unsigned int *u, unsigned int *p) {
    return codec_impl(d, u, p, 0);
}
API nvmlReturn_t nvmlDeviceGetDecoderUtilization(nvmlDevice_t d, unsigned int *u, unsigned int *p) {
    return codec_impl(d, u, p, 1);
}

/* ---------------------------------------------------------------- thermal, power, clocks */

API nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, nvmlTemperatureSensors_t sensor,
                                          unsigned int *temp) {
    DEVICE_CALL(device, {
        if (!temp || sensor != NVML_TEMPERATURE_GPU) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (m) rc = NVML_ERROR_NOT_SUPPORTED;
        else *temp = g->temp;
    });
}

API nvmlReturn_t nvmlDeviceGetTemperatureThreshold(nvmlDevice_t device,
                                                   nvmlTemperatureThresholds_t type,
                                                   unsigned int *temp) {
    DEVICE_CALL(device, {
        if (!temp) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (m) rc = NVML_ERROR_NOT_SUPPORTED;
        else if (type == NVML_TEMPERATURE_THRESHOLD_SHUTDOWN) *temp = g->shutdown;
        else if (type == NVML_TEMPERATURE_THRESHOLD_SLOWDOWN) *temp = g->slowdown;
        else rc = NVML_ERROR_NOT_SUPPORTED;
    });
}

API nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    GPU_ONLY(power, g->power);
}
API nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit) {
    GPU_ONLY(limit, g->limit);
}
API nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int *limit) {
    GPU_ONLY(limit, g->limit);
}
API nvmlReturn_t nvmlDeviceGetPowerManagementDefaultLimit(nvmlDevice_t device,
                                                          unsigned int *limit) {
    GPU_ONLY(limit, g->limit);
}
API nvmlReturn_t nvmlDeviceGetPowerManagementLimitConstraints(nvmlDevice_t device,
                                                              unsigned int *min_limit,
                                                              unsigned int *max_limit) {
    DEVICE_CALL(device, {
        if (!min_limit || !max_limit) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (m) rc = NVML_ERROR_NOT_SUPPORTED;
        else {
            *min_limit = g->power_min;
            *max_limit = g->power_max;
        }
    });
}
API nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device,
                                                     unsigned long long *energy) {
    GPU_ONLY(energy, g->energy);
}
API nvmlReturn_t nvmlDeviceGetPerformanceState(nvmlDevice_t device, nvmlPstates_t *state) {
    GPU_ONLY(state, (nvmlPstates_t)g->pstate);
}
API nvmlReturn_t nvmlDeviceGetPowerState(nvmlDevice_t device, nvmlPstates_t *state) {
    GPU_ONLY(state, (nvmlPstates_t)g->pstate);
}

static unsigned int clock_of(const gpu_t *g, nvmlClockType_t type, int max, int *ok) {
    *ok = 1;
    switch (type) {
    case NVML_CLOCK_GRAPHICS:
    case NVML_CLOCK_SM: return max ? g->max_sm : g->sm_clock;
    case NVML_CLOCK_MEM: return max ? g->max_mem : g->mem_clock;
    case NVML_CLOCK_VIDEO: return max ? g->max_video : g->video;
    default: *ok = 0; return 0;
    }
}

static nvmlReturn_t clock_impl(nvmlDevice_t device, nvmlClockType_t type, unsigned int *clock,
                               int max) {
    DEVICE_CALL(device, {
        int ok;
        unsigned int value = clock_of(g, type, max, &ok);
        if (!clock || !ok) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (m) rc = NVML_ERROR_NOT_SUPPORTED;
        else *clock = value;
    });
}
API nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, nvmlClockType_t t, unsigned int *c) {
    return clock_impl(d, t, c, 0);
}
API nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t d, nvmlClockType_t t, unsigned int *c) {
    return clock_impl(d, t, c, 1);
}

API nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t device,
                                                        unsigned long long *reasons) {
    GPU_ONLY(reasons, g->reasons);
}
API nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device,
                                                           unsigned long long *reasons) {
    GPU_ONLY(reasons, g->reasons);
}
API nvmlReturn_t nvmlDeviceGetSupportedClocksEventReasons(nvmlDevice_t device,
                                                          unsigned long long *reasons) {
    GPU_ONLY(reasons, 0x1FFULL);
}
API nvmlReturn_t nvmlDeviceGetSupportedClocksThrottleReasons(nvmlDevice_t device,
                                                             unsigned long long *reasons) {
    GPU_ONLY(reasons, 0x1FFULL);
}

API nvmlReturn_t nvmlDeviceGetFanSpeed(nvmlDevice_t device, unsigned int *speed) {
    DEVICE_CALL(device, {
        if (!speed) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (m || g->fan < 0) rc = NVML_ERROR_NOT_SUPPORTED; /* passively cooled */
        else *speed = (unsigned int)g->fan;
    });
}
API nvmlReturn_t nvmlDeviceGetNumFans(nvmlDevice_t device, unsigned int *fans) {
    GPU_ONLY(fans, g->fan < 0 ? 0u : 1u);
}

/* ---------------------------------------------------------------- modes */

API nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t device, nvmlEnableState_t *mode) {
    GPU_ONLY(mode, NVML_FEATURE_ENABLED);
}
API nvmlReturn_t nvmlDeviceGetComputeMode(nvmlDevice_t device, nvmlComputeMode_t *mode) {
    GPU_ONLY(mode, NVML_COMPUTEMODE_DEFAULT);
}
API nvmlReturn_t nvmlDeviceGetDisplayMode(nvmlDevice_t device, nvmlEnableState_t *mode) {
    GPU_ONLY(mode, NVML_FEATURE_DISABLED);
}
API nvmlReturn_t nvmlDeviceGetDisplayActive(nvmlDevice_t device, nvmlEnableState_t *mode) {
    GPU_ONLY(mode, NVML_FEATURE_DISABLED);
}

/* ---------------------------------------------------------------- ECC */

API nvmlReturn_t nvmlDeviceGetEccMode(nvmlDevice_t device, nvmlEnableState_t *current,
                                      nvmlEnableState_t *pending) {
    DEVICE_CALL(device, {
        if (!current || !pending) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (m || !g->ecc_supported) rc = NVML_ERROR_NOT_SUPPORTED;
        else *current = *pending = NVML_FEATURE_ENABLED;
    });
}

/* Injected ECC faults are device-memory errors, the counts nvidia-smi prints. */
API nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, nvmlMemoryErrorType_t type,
                                             nvmlEccCounterType_t counter,
                                             unsigned long long *count) {
    DEVICE_CALL(device, {
        if (!count || (int)type < 0 || (int)type > 1 || (int)counter < 0 || (int)counter > 1)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (m || !g->ecc_supported) rc = NVML_ERROR_NOT_SUPPORTED;
        else *count = g->ecc[type][counter];
    });
}

/* Windows driver models (WDDM/TCC): not supported on Linux, as the real library says. */
static nvmlReturn_t driver_model_impl(nvmlDevice_t device, nvmlDriverModel_t *current,
                                      nvmlDriverModel_t *pending) {
    DEVICE_CALL(device, {
        if (!current || !pending) rc = NVML_ERROR_INVALID_ARGUMENT;
        else rc = NVML_ERROR_NOT_SUPPORTED;
    });
}
API nvmlReturn_t nvmlDeviceGetDriverModel_v2(nvmlDevice_t d, nvmlDriverModel_t *c,
                                             nvmlDriverModel_t *p) {
    return driver_model_impl(d, c, p);
}
API nvmlReturn_t nvmlDeviceGetDriverModel(nvmlDevice_t d, nvmlDriverModel_t *c,
                                          nvmlDriverModel_t *p) {
    return driver_model_impl(d, c, p);
}

/* Per-process utilisation samples are not simulated (nvidia-smi pmon is; docs/nvml.md). */
API nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device,
                                                 nvmlProcessUtilizationSample_t *utilization,
                                                 unsigned int *count,
                                                 unsigned long long last_seen) {
    DEVICE_CALL(device, {
        if (!count) rc = NVML_ERROR_INVALID_ARGUMENT;
        else rc = NVML_ERROR_NOT_SUPPORTED;
    });
}

/* ---------------------------------------------------------------- processes */

/* NVML's two-call protocol: too small a buffer returns INSUFFICIENT_SIZE with the count. */
static nvmlReturn_t procs_impl(nvmlDevice_t device, unsigned int *count, void *infos, int v1,
                               int graphics) {
    DEVICE_CALL(device, {
        const proc_t *list = m ? m->procs : g->procs;
        unsigned int n = graphics ? 0u : (unsigned int)(m ? m->nproc : g->nproc);
        if (!count) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (*count < n || (n && !infos)) {
            *count = n;
            rc = NVML_ERROR_INSUFFICIENT_SIZE;
        } else {
            for (unsigned int i = 0; i < n; i++) {
                if (v1) {
                    nvmlProcessInfo_v1_t *out = (nvmlProcessInfo_v1_t *)infos + i;
                    out->pid = list[i].pid;
                    out->usedGpuMemory = list[i].used;
                } else {
                    nvmlProcessInfo_t *out = (nvmlProcessInfo_t *)infos + i;
                    out->pid = list[i].pid;
                    out->usedGpuMemory = list[i].used;
                    out->gpuInstanceId = list[i].gi;
                    out->computeInstanceId = list[i].ci;
                }
            }
            *count = n;
        }
    });
}
API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *c,
                                                         nvmlProcessInfo_t *i) {
    return procs_impl(d, c, i, 0, 0);
}
API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *c,
                                                         nvmlProcessInfo_v2_t *i) {
    return procs_impl(d, c, i, 0, 0);
}
API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t d, unsigned int *c,
                                                      nvmlProcessInfo_v1_t *i) {
    return procs_impl(d, c, i, 1, 0);
}
API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t d, unsigned int *c,
                                                          nvmlProcessInfo_t *i) {
    return procs_impl(d, c, i, 0, 1);
}
API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t d, unsigned int *c,
                                                          nvmlProcessInfo_v2_t *i) {
    return procs_impl(d, c, i, 0, 1);
}
API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses(nvmlDevice_t d, unsigned int *c,
                                                       nvmlProcessInfo_v1_t *i) {
    return procs_impl(d, c, i, 1, 1);
}
API nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *c,
                                                            nvmlProcessInfo_t *i) {
    return procs_impl(d, c, i, 0, 1); /* no MPS server: always none */
}

/* ---------------------------------------------------------------- MIG */

API nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current,
                                      unsigned int *pending) {
    DEVICE_CALL(device, {
        if (!current || !pending) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (m || !g->mig_capable) rc = NVML_ERROR_NOT_SUPPORTED;
        else *current = *pending = g->mig_enabled ? NVML_DEVICE_MIG_ENABLE : NVML_DEVICE_MIG_DISABLE;
    });
}

API nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    DEVICE_CALL(device, {
        if (!count) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (m || !g->mig_capable) rc = NVML_ERROR_NOT_SUPPORTED;
        else *count = g->max_mig;
    });
}

API nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *is_mig) {
    DEVICE_CALL(device, {
        if (!is_mig) rc = NVML_ERROR_INVALID_ARGUMENT;
        else *is_mig = m != NULL;
    });
}

/* MIG devices are indexed 0..n-1 in the order nvidia-smi lists them (by GPU instance id). */
API nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                     nvmlDevice_t *mig) {
    DEVICE_CALL(device, {
        if (!mig) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (m || !g->mig_capable) rc = NVML_ERROR_NOT_SUPPORTED;
        else if (!g->mig_enabled) rc = NVML_ERROR_INVALID_STATE;
        else if (index >= g->max_mig) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (index >= (unsigned int)g->nmig) rc = NVML_ERROR_NOT_FOUND;
        else *mig = &mig_handles[g - gpus][index];
    });
}

API nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t mig,
                                                              nvmlDevice_t *device) {
    gpu_t *g;
    mig_t *m;
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = resolve(mig, &g, &m);
    if (rc == NVML_SUCCESS) {
        if (!device) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!m) rc = NVML_ERROR_INVALID_ARGUMENT; /* not a MIG handle */
        else *device = &gpu_handles[g - gpus];
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

API nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id) {
    DEVICE_CALL(device, {
        if (!id) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!m) rc = NVML_ERROR_NOT_SUPPORTED;
        else *id = m->gi;
    });
}

API nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id) {
    DEVICE_CALL(device, {
        if (!id) rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!m) rc = NVML_ERROR_NOT_SUPPORTED;
        else *id = m->ci;
    });
}
