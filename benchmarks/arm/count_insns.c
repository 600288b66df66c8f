/*
 * A QEMU TCG plugin that counts the guest instructions a program executes, and among
 * them the vector multiply-accumulates that convolution kernels are made of:
 *
 *   dot   sdot, udot, usdot, sudot        (int8 dot product, ARMv8.2 dotprod: Pi 5)
 *   widen smull/umull/smlal/umlal (and 2), sadalp/uadalp, smlsl
 *                                          (int8 without dotprod: widened to 16/32 bits)
 *   fma   fmla, fmls, fmlal, fmlsl, bfdot, bfmmla
 *   mmla  smmla, ummla, usmmla            (int8 matrix multiply, ARMv8.6 i8mm)
 *
 * Written against QEMU 7.2's plugin API (version 1: Debian Bookworm's qemu-user; the
 * static build has no plugin support). Every translated block gets inline adds of its
 * instruction counts, so the cost is a few host instructions per block executed.
 * Counters are shared by all vCPU threads without locks: run the guest on one thread.
 * A guest marks the window it wants counted with getpgid(MARK), a call that fails and
 * does nothing else: each mark snapshots the counters, written as "marks" at exit, so
 * a process's start-up (a Python import varies by tens of millions of instructions from
 * run to run) stays out of the difference between two marks.
 *
 *   qemu-aarch64 -cpu cortex-a72 -plugin ./count_insns.so,out=counts.json prog ...
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The part of <qemu/qemu-plugin.h> (QEMU 7.2, API version 1) this plugin uses. */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index,
                                              int64_t num, uint64_t a1, uint64_t a2,
                                              uint64_t a3, uint64_t a4, uint64_t a5,
                                              uint64_t a6, uint64_t a7, uint64_t a8);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id,
                                          qemu_plugin_vcpu_syscall_cb_t cb);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
                                           qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb,
                                              enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb,
                                    void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
char *qemu_plugin_insn_disas(const struct qemu_plugin_insn *insn);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

enum kind { TOTAL, DOT, WIDEN, FMA, MMLA, KINDS };
static const char *const kind_names[KINDS] = {"total", "dot", "widen", "fma", "mmla"};
static uint64_t counts[KINDS];
static char out_path[4096] = "count_insns.json";
#define GETPGID 155                 /* aarch64's syscall number */
#define MARK 0x5EED5EEDu            /* getpgid(MARK): no such process, a mark */
#define MAX_MARKS 16
static uint64_t marks[MAX_MARKS][KINDS];
static int n_marks;

static const char *const dot[] = {"sdot", "udot", "usdot", "sudot", NULL};
static const char *const widen[] = {"smull", "smull2", "umull", "umull2", "smlal", "smlal2",
                                    "umlal", "umlal2", "smlsl", "smlsl2", "sadalp", "uadalp",
                                    NULL};
static const char *const fma[] = {"fmla", "fmls", "fmlal", "fmlal2", "fmlsl", "fmlsl2",
                                  "bfdot", "bfmmla", "bfmlalb", "bfmlalt", NULL};
static const char *const mmla[] = {"smmla", "ummla", "usmmla", NULL};

static int in(const char *mnemonic, const char *const *names)
{
    for (; *names; names++) {
        if (strcmp(mnemonic, *names) == 0) {
            return 1;
        }
    }
    return 0;
}

/* SDOT/UDOT by its encoding (Arm ARM, Advanced SIMD three-same extra and by-element):
 * Debian Bookworm's capstone 4 predates dotprod and disassembles them as unknown. */
static int is_dot(const struct qemu_plugin_insn *insn)
{
    uint32_t word;
    if (qemu_plugin_insn_size(insn) != 4) {
        return 0;
    }
    memcpy(&word, qemu_plugin_insn_data(insn), 4);
    return (word & 0x9FE0FC00u) == 0x0E809400u     /* sdot/udot (vector) */
        || (word & 0x9FC0F400u) == 0x0F80E000u;    /* sdot/udot (by element) */
}

/* The kind of one instruction, from its disassembly ("smlal2 v0.4s, ..."); KINDS when
 * it is none of them. */
static enum kind classify(const struct qemu_plugin_insn *insn)
{
    if (is_dot(insn)) {
        return DOT;
    }
    char *text = qemu_plugin_insn_disas(insn);
    char mnemonic[16] = {0};
    enum kind kind = KINDS;
    if (text && sscanf(text, "%15s", mnemonic) == 1) {
        kind = in(mnemonic, dot) ? DOT : in(mnemonic, widen) ? WIDEN
             : in(mnemonic, fma) ? FMA : in(mnemonic, mmla) ? MMLA : KINDS;
    }
    free(text);
    return kind;
}

static void translated(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    uint64_t block[KINDS] = {0};
    size_t n = qemu_plugin_tb_n_insns(tb);
    block[TOTAL] = n;
    for (size_t i = 0; i < n; i++) {
        enum kind kind = classify(qemu_plugin_tb_get_insn(tb, i));
        if (kind != KINDS) {
            block[kind]++;
        }
    }
    for (int k = 0; k < KINDS; k++) {
        if (block[k]) {
            qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64,
                                                     &counts[k], block[k]);
        }
    }
}

static void syscall_made(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                         uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                         uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (num == GETPGID && a1 == MARK && n_marks < MAX_MARKS) {
        memcpy(marks[n_marks++], counts, sizeof(counts));
    }
}

static void write_counts(FILE *out, const uint64_t *values)
{
    fprintf(out, "{");
    for (int k = 0; k < KINDS; k++) {
        fprintf(out, "%s\"%s\": %llu", k ? ", " : "", kind_names[k],
                (unsigned long long)values[k]);
    }
    fprintf(out, "}");
}

static void finished(qemu_plugin_id_t id, void *userdata)
{
    FILE *out = fopen(out_path, "w");
    if (!out) {
        perror(out_path);
        return;
    }
    fprintf(out, "{\"all\": ");
    write_counts(out, counts);
    fprintf(out, ", \"marks\": [");
    for (int m = 0; m < n_marks; m++) {
        fprintf(out, "%s", m ? ", " : "");
        write_counts(out, marks[m]);
    }
    fprintf(out, "]}\n");
    fclose(out);
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            snprintf(out_path, sizeof(out_path), "%s", argv[i] + 4);
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, translated);
    qemu_plugin_register_vcpu_syscall_cb(id, syscall_made);
    qemu_plugin_register_atexit_cb(id, finished, NULL);
    return 0;
}
