/* Mask stream v1 and dropout in one pass over a buffer (docs/spec.md, docs/performance.md).

   For element i of a contiguous buffer, with counter c = offset + i:

       (y0, y1) = Threefry-2x32-20((k0, k1), (c >> 32, c & 0xFFFFFFFF))
       keep_i   = ((y0 ^ y1) >> 9) < limit          limit = T >> 9 = ceil(float32(q) * 2**23)
       y_i      = keep_i ? x_i * s : +0.0           (x_i itself when there is no scale)

   The product is rounded once to x's dtype: float16 and bfloat16 are widened to float32, where
   the product of two 11-bit (8-bit) significands is exact, and rounded to nearest-even once; this
   is how NumPy (ml_dtypes) and PyTorch multiply them. Dropped elements are the bits of +0.0
   whatever x holds there, NaN included.

   Comparing (bits >> 9) < limit instead of bits < T keeps T == 2**32 (keep all) in 32 bits.

   The element loops are written so that the compiler vectorises them; on x86-64 Linux with GCC
   or Clang the hot functions are also compiled for AVX2 and AVX-512 and picked at load time, as
   the wheel must run on any x86-64 processor. No -ffast-math: it would flush subnormals to zero.

   A large buffer is split into chunks that several threads take in turn (POSIX threads, or
   Windows threads; a torch tensor's on torch's OpenMP threads; one thread where none is
   available, or when compiled with -DXDROP_NO_THREADS). The stream is counter-based, so every
   split gives the bits of one pass: element i uses counter offset + i whichever thread
   computes it. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#if defined(XDROP_NO_THREADS)
#define XDROP_THREADING "none"
#elif defined(_WIN32)
#define XDROP_WINDOWS_THREADS
#define XDROP_THREADING "windows"
#include <windows.h>
#elif !defined(__GNUC__)
/* threads take chunks with GCC's (and Clang's) atomic built-ins: other compilers run one */
#elif defined(__has_include)
#if __has_include(<pthread.h>)
#define XDROP_PTHREADS
#endif
#elif defined(__unix__) || defined(__APPLE__)
#define XDROP_PTHREADS
#endif
#ifdef XDROP_PTHREADS
#define XDROP_THREADING "pthreads"
#include <pthread.h>
#include <signal.h>
#endif
#ifndef XDROP_THREADING
#define XDROP_THREADING "none"
#endif

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define XDROP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef XDROP_CLONES
#define XDROP_CLONES
#endif

#define KEY_PARITY 0x1BD11BDAu
/* Elements per block: the bits of one block (4 KiB) stay in L1 between the two passes */
#define BLOCK 1024

enum dtype { FLOAT16, BFLOAT16, FLOAT32, FLOAT64 };

static inline uint32_t rotl(uint32_t a, int bits) { return (a << bits) | (a >> (32 - bits)); }

#define MIX(r)               \
    do {                     \
        x0 += x1;            \
        x1 = rotl(x1, r) ^ x0; \
    } while (0)
#define GROUP_A MIX(13); MIX(15); MIX(26); MIX(6)
#define GROUP_B MIX(17); MIX(29); MIX(16); MIX(24)

/* bits[j] = y0 ^ y1 of Threefry-2x32-20(key, (high, low + j)) for j < n; low + n <= 2**32 */
static inline void stream_bits(uint32_t k0, uint32_t k1, uint32_t high, uint32_t low, int n,
                               uint32_t *bits) {
    const uint32_t k2 = k0 ^ k1 ^ KEY_PARITY;
    for (int j = 0; j < n; j++) {
        uint32_t x0 = high + k0;
        uint32_t x1 = (low + (uint32_t)j) + k1;
        GROUP_A; x0 += k1; x1 += k2 + 1u;
        GROUP_B; x0 += k2; x1 += k0 + 2u;
        GROUP_A; x0 += k0; x1 += k1 + 3u;
        GROUP_B; x0 += k1; x1 += k2 + 4u;
        GROUP_A; x0 += k2; x1 += k0 + 5u;
        bits[j] = x0 ^ x1;
    }
}

/* -- 16-bit floats, in integer arithmetic (vectorisable, no F16C needed) ---------------------- */
static inline float float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float widen_bfloat16(uint16_t h) { return float_of((uint32_t)h << 16); }

static inline float widen_float16(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t rest = (uint32_t)(h & 0x7FFFu) << 13;
    /* rest as a float32 has the exponent biased by 127 instead of 15: scaling by 2**112 fixes
       it exactly. A subnormal half would be a subnormal float32 there, which a CPU flushing
       subnormal inputs (torch.set_flush_denormal) reads as zero: it is its significand times
       2**-24 instead, a product of normal floats whatever the CPU flushes. */
    uint32_t magnitude = bits_of(float_of(rest) * 0x1p112f);
    if (rest < (0x0400u << 13)) magnitude = bits_of((float)(h & 0x03FFu) * 0x1p-24f);
    if (rest >= (0x7C00u << 13)) magnitude = rest | 0x7F800000u; /* inf and NaN (payload kept) */
    return float_of(sign | magnitude);
}

/* round to nearest-even; NaN stays NaN with its sign and top payload bits, made quiet */
static inline uint16_t narrow_bfloat16(float f) {
    uint32_t u = bits_of(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline uint16_t narrow_float16(float f) {
    uint32_t u = bits_of(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    u &= 0x7FFFFFFFu;
    uint32_t h;
    if (u > 0x7F800000u) {
        h = 0x7E00u | ((u >> 13) & 0x3FFu); /* NaN: quiet, top payload bits kept */
    } else if (u >= 0x47800000u) {          /* >= 65536 (float16's max is 65504): infinity */
        h = 0x7C00u;
    } else if (u < 0x38800000u) {           /* below 2**-14: a subnormal float16 or zero */
        /* adding 0.5 aligns the 10 significand bits at the bottom; float32 addition rounds to
           nearest-even, which is the rounding wanted */
        h = bits_of(float_of(u) + 0.5f) - 0x3F000000u;
    } else {
        uint32_t odd = (u >> 13) & 1u;
        u += 0xC8000FFFu + odd; /* rebias the exponent (15 - 127 << 23) and round to even */
        h = u >> 13;
    }
    return (uint16_t)(sign | h);
}

/* -- dropout of one block --------------------------------------------------------------------- */
#define KEEP(j) ((uint32_t)0 - (uint32_t)((bits[j] >> 9) < limit))

static inline void apply_block(enum dtype dtype, const char *x, char *y, uint8_t *keep, int n,
                               const uint32_t *bits, uint32_t limit, int scaled, double factor) {
    if (keep != NULL)
        for (int j = 0; j < n; j++) keep[j] = (uint8_t)((bits[j] >> 9) < limit);
    if (dtype == FLOAT64) {
        const double *xs = (const double *)x;
        uint64_t *ys = (uint64_t *)y;
        for (int j = 0; j < n; j++) {
            double v = scaled ? xs[j] * factor : xs[j];
            uint64_t b;
            memcpy(&b, &v, 8);
            ys[j] = b & ((uint64_t)0 - (uint64_t)((bits[j] >> 9) < limit));
        }
    } else if (dtype == FLOAT32) {
        const float *xs = (const float *)x;
        uint32_t *ys = (uint32_t *)y;
        const float s = (float)factor; /* exact: the scale is a float32 value */
        for (int j = 0; j < n; j++) ys[j] = bits_of(scaled ? xs[j] * s : xs[j]) & KEEP(j);
    } else {
        const uint16_t *xs = (const uint16_t *)x;
        uint16_t *ys = (uint16_t *)y;
        const float s = (float)factor; /* exact: the scale is a value of the 16-bit dtype */
        if (!scaled)
            for (int j = 0; j < n; j++) ys[j] = (uint16_t)(xs[j] & KEEP(j));
        else if (dtype == BFLOAT16)
            for (int j = 0; j < n; j++)
                ys[j] = (uint16_t)(narrow_bfloat16(widen_bfloat16(xs[j]) * s) & KEEP(j));
        else
            for (int j = 0; j < n; j++)
                ys[j] = (uint16_t)(narrow_float16(widen_float16(xs[j]) * s) & KEEP(j));
    }
}

XDROP_CLONES
static void run(enum dtype dtype, size_t itemsize, const char *x, char *y, uint8_t *keep,
                uint64_t count, uint32_t k0, uint32_t k1, uint64_t offset, uint32_t limit,
                int scaled, double factor) {
    uint32_t bits[BLOCK];
    uint64_t done = 0;
    while (done < count) {
        uint64_t counter = offset + done;
        uint32_t high = (uint32_t)(counter >> 32), low = (uint32_t)counter;
        /* a block never crosses a multiple of 2**32, so it has one high counter word */
        uint64_t room = ((uint64_t)1 << 32) - low;
        uint64_t left = count - done;
        int n = (int)(left < BLOCK ? left : BLOCK);
        if ((uint64_t)n > room) n = (int)room;
        stream_bits(k0, k1, high, low, n, bits);
        apply_block(dtype, x + done * itemsize, y + done * itemsize,
                    keep == NULL ? NULL : keep + done, n, bits, limit, scaled, factor);
        done += (uint64_t)n;
    }
}

/* -- chunks on threads ----------------------------------------------------------------------- */
/* The most threads one call may use */
#define MAX_THREADS 256
/* Chunks are a multiple of this many elements (64 bytes of the 1-byte mask, more of y), so that
   no two threads write to one cache line, and at most CHUNK_MAX elements (~80 us of work) */
#define CHUNK_ALIGN 64
#define CHUNK_MAX 65536

#if defined(XDROP_PTHREADS) || defined(XDROP_WINDOWS_THREADS)
#if defined(_MSC_VER)
#define FETCH_ADD(counter, n) \
    ((uint64_t)InterlockedExchangeAdd64((volatile LONG64 *)(counter), (LONG64)(n)))
#else
#define FETCH_ADD(counter, n) __atomic_fetch_add((counter), (n), __ATOMIC_RELAXED)
#endif
#else
#define FETCH_ADD(counter, n) ((*(counter) += (n)) - (n))
#endif

struct pass {
    enum dtype dtype;
    size_t itemsize;
    const char *x;
    char *y;
    uint8_t *keep;
    uint32_t k0, k1;
    uint64_t offset;
    uint32_t limit;
    int scaled;
    double factor;
    uint64_t count, chunk;
    uint64_t next; /* the first element no thread has taken yet; taken with FETCH_ADD */
    uint64_t parts, seated; /* OpenMP's: the threads that may take chunks, and those that came */
};

/* Take chunks until none is left. Threads take them in turn rather than a fixed share each: on a
   busy machine a thread that waits for a core leaves its chunks to the others. */
static void run_chunks(struct pass *p) {
    for (;;) {
        uint64_t begin = FETCH_ADD(&p->next, p->chunk);
        if (begin >= p->count) return;
        uint64_t end = p->count - begin < p->chunk ? p->count : begin + p->chunk;
        run(p->dtype, p->itemsize, p->x + begin * p->itemsize, p->y + begin * p->itemsize,
            p->keep == NULL ? NULL : p->keep + begin, end - begin, p->k0, p->k1,
            p->offset + begin, p->limit, p->scaled, p->factor);
    }
}

#if defined(XDROP_PTHREADS)
static void *chunks_thread(void *pass) {
    run_chunks((struct pass *)pass);
    return NULL;
}
#elif defined(XDROP_WINDOWS_THREADS)
static DWORD WINAPI chunks_thread(LPVOID pass) {
    run_chunks((struct pass *)pass);
    return 0;
}
#endif

/* A torch tensor's call (openmp_grain above 0) runs its parts on PyTorch's OpenMP threads where
   torch is loaded, as torch's own operations do: after each operation those threads keep
   spinning on their cores for a while (GOMP_SPINCOUNT), and threads started for the call beside
   them waited for a core, slower than one thread (docs/performance.md, "After a torch
   operation"). Being started already, they repay a smaller part than new threads do, hence a
   grain of their own. The runtime is whichever libtorch_cpu.so links (libgomp, often under a
   hashed name), found through its entry point of `#pragma omp parallel`. Its threads do not
   survive fork(): a fork's child that asks for them waits forever, as torch's own operations do
   there (a DataLoader worker runs torch on one thread, and so the kernel, which the caller caps
   at torch.get_num_threads()). A child forked after this module was loaded runs on threads of
   its own; one that loads it first cannot tell, hence torch tensors alone. */
#if defined(XDROP_PTHREADS) && defined(__linux__) && defined(__has_include)
#if __has_include(<dlfcn.h>)
#define XDROP_OPENMP
#include <dlfcn.h>
typedef void (*openmp_parallel)(void (*)(void *), void *, unsigned, unsigned);
static int forked;
static void note_fork(void) { forked = 1; }
static openmp_parallel torch_parallel; /* found once: torch is never unloaded */

/* GOMP_parallel of the OpenMP runtime torch links, where torch is loaded; else NULL */
static openmp_parallel torch_openmp(void) {
    if (forked) return NULL;
    openmp_parallel parallel = __atomic_load_n(&torch_parallel, __ATOMIC_RELAXED);
    if (parallel != NULL) return parallel;
    void *torch = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    if (torch == NULL) return NULL;
    /* a handle's lookup searches the library, then what it links */
    parallel = (openmp_parallel)(uintptr_t)dlsym(torch, "GOMP_parallel");
    dlclose(torch); /* only the count RTLD_NOLOAD added: whoever loaded it keeps it */
    __atomic_store_n(&torch_parallel, parallel, __ATOMIC_RELAXED);
    return parallel;
}

/* Torch's whole team enters, as in torch's own regions: a smaller team than the last makes GNU
   OpenMP end the threads left out, which torch's next operation starts again. Only the first
   parts threads to come take chunks. */
static void openmp_chunks(void *argument) {
    struct pass *pass = (struct pass *)argument;
    if (FETCH_ADD(&pass->seated, 1) < pass->parts) run_chunks(pass);
}
#endif
#endif

/* min(threads, count / grain), at least one: the kernel's own threads each take a grain */
static unsigned split_count(uint64_t count, unsigned threads, uint64_t grain) {
    if (count / grain < threads) threads = (unsigned)(count / grain);
    return threads > 1 ? threads : 1;
}

/* torch's rule for its OpenMP threads (at::parallel_for): above one grain, ceil(count / grain)
   parts, at most threads */
static unsigned openmp_split_count(uint64_t count, unsigned threads, uint64_t grain) {
    if (count <= grain) return 1;
    uint64_t parts = count / grain + (count % grain != 0);
    return parts < threads ? (unsigned)parts : threads;
}

/* The pass over its count elements, the calling thread included; returns the number of threads
   the call was split over. With openmp_grain above 0, on openmp_split_count(count, threads,
   openmp_grain) of torch's OpenMP threads where its runtime is loaded (fewer where its team is
   smaller); else on split_count(count, threads, grain) threads started for the call, within
   openmp_grain's count too where it is given, of which one that cannot be started leaves its
   chunks to the others. */
static unsigned run_parallel(struct pass *pass, unsigned threads, uint64_t grain,
                             uint64_t openmp_grain) {
    uint64_t count = pass->count;
    pass->next = 0;
    unsigned parts = openmp_grain > 0 ? openmp_split_count(count, threads, openmp_grain)
                                      : split_count(count, threads, grain);
    int on_openmp = 0;
#if defined(XDROP_OPENMP)
    openmp_parallel parallel = openmp_grain > 0 && parts > 1 ? torch_openmp() : NULL;
    on_openmp = parallel != NULL;
#endif
    if (!on_openmp) parts = split_count(count, parts, grain);
    if (parts <= 1) {
        pass->chunk = count > 0 ? count : 1;
        run_chunks(pass);
        return 1;
    }
    /* about four chunks a thread, fewer where they would be above CHUNK_MAX */
    uint64_t chunk = (count / (4 * (uint64_t)parts) + CHUNK_ALIGN - 1) / CHUNK_ALIGN * CHUNK_ALIGN;
    pass->chunk = chunk < CHUNK_ALIGN ? CHUNK_ALIGN : chunk > CHUNK_MAX ? CHUNK_MAX : chunk;
#if defined(XDROP_OPENMP)
    if (on_openmp) {
        pass->parts = parts;
        pass->seated = 0;
        parallel(openmp_chunks, pass, 0, 0); /* 0: the team torch's regions get in this thread */
        return pass->seated < parts ? (unsigned)pass->seated : parts;
    }
#endif
#if defined(XDROP_PTHREADS)
    pthread_t handle[MAX_THREADS];
    int started[MAX_THREADS];
    /* our workers block every signal, so that the process's signals reach Python's threads */
    sigset_t all, old;
    sigfillset(&all);
    int masked = pthread_sigmask(SIG_SETMASK, &all, &old) == 0;
    for (unsigned k = 1; k < parts; k++)
        started[k] = pthread_create(&handle[k], NULL, chunks_thread, pass) == 0;
    if (masked) pthread_sigmask(SIG_SETMASK, &old, NULL);
    run_chunks(pass);
    unsigned split_over = 1;
    for (unsigned k = 1; k < parts; k++)
        if (started[k]) split_over += pthread_join(handle[k], NULL) == 0;
    return split_over;
#elif defined(XDROP_WINDOWS_THREADS)
    HANDLE handle[MAX_THREADS];
    for (unsigned k = 1; k < parts; k++)
        handle[k] = CreateThread(NULL, 0, chunks_thread, pass, 0, NULL);
    run_chunks(pass);
    unsigned split_over = 1;
    for (unsigned k = 1; k < parts; k++) {
        if (handle[k] != NULL) {
            WaitForSingleObject(handle[k], INFINITE);
            CloseHandle(handle[k]);
            split_over++;
        }
    }
    return split_over;
#else
    run_chunks(pass);
    return 1;
#endif
}

/* -- Python ----------------------------------------------------------------------------------- */
static const struct { const char *name; enum dtype dtype; Py_ssize_t itemsize; } DTYPES[] = {
    {"float16", FLOAT16, 2}, {"bfloat16", BFLOAT16, 2}, {"float32", FLOAT32, 4},
    {"float64", FLOAT64, 8},
};

PyDoc_STRVAR(dropout_doc,
"dropout(x, y, keep, dtype, k0, k1, offset, threshold, factor, threads=1, grain=1,\n"
"        openmp_grain=0)\n"
"--\n\n"
"Write dropout of the contiguous buffer x into y (same size) and, unless keep is None, the\n"
"keep mask as one byte (0 or 1) per element into keep. dtype names x's element type\n"
"('float16', 'bfloat16', 'float32', 'float64'); (k0, k1) are the key words; element i uses\n"
"counter offset + i; it is kept when its bits are below threshold (T of docs/spec.md, a\n"
"multiple of 512 up to 2**32); kept elements are x * factor rounded once (x if factor is None),\n"
"dropped ones +0.0. Runs without the GIL, on min(threads, count // grain) threads (at least\n"
"one; threads from 1 to MAX_THREADS, grain at least 1). With openmp_grain above 0, on PyTorch's\n"
"OpenMP threads where its runtime is loaded (see torch_threading()), as torch's operations\n"
"split: one thread up to openmp_grain elements, else min(threads, ceil(count / openmp_grain)),\n"
"at most the team torch's operations get in this thread; where it is not, within both grains.\n"
"The bits do not depend on the split. Returns the number of threads the call was split\n"
"over.");

/* An int from 0 to 2**64 - 1 (OverflowError outside it, TypeError for another type): the
   formats "K" and "I" would take any int modulo 2**64 or 2**32 */
static int as_uint64(PyObject *object, void *out) {
    unsigned long long value = PyLong_AsUnsignedLongLong(object);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) return 0;
    *(unsigned long long *)out = value;
    return 1;
}

static PyObject *dropout(PyObject *module, PyObject *args) {
    Py_buffer x, y, keep;
    PyObject *keep_object, *factor_object;
    const char *dtype_name;
    unsigned long long k0, k1, offset, threshold, threads = 1, grain = 1, openmp_grain = 0;
    if (!PyArg_ParseTuple(args, "y*w*OsO&O&O&O&O|O&O&O&", &x, &y, &keep_object, &dtype_name,
                          as_uint64, &k0, as_uint64, &k1, as_uint64, &offset, as_uint64,
                          &threshold, &factor_object, as_uint64, &threads, as_uint64, &grain,
                          as_uint64, &openmp_grain))
        return NULL;
    PyObject *result = NULL;
    int have_keep = 0;
    double factor = 1.0;
    int scaled = factor_object != Py_None;
    int found = -1;
    for (size_t d = 0; d < sizeof DTYPES / sizeof DTYPES[0]; d++)
        if (strcmp(dtype_name, DTYPES[d].name) == 0) found = (int)d;
    if (found < 0) {
        PyErr_Format(PyExc_ValueError, "dtype must be float16, bfloat16, float32 or float64, got %s",
                     dtype_name);
        goto done;
    }
    Py_ssize_t itemsize = DTYPES[found].itemsize;
    if (!PyBuffer_IsContiguous(&x, 'C') || !PyBuffer_IsContiguous(&y, 'C') || x.len != y.len ||
        x.len % itemsize != 0) {
        PyErr_SetString(PyExc_ValueError, "x and y must be contiguous buffers of the same size");
        goto done;
    }
    uint64_t count = (uint64_t)(x.len / itemsize);
    if (keep_object != Py_None) {
        if (PyObject_GetBuffer(keep_object, &keep, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        have_keep = 1;
        if ((uint64_t)keep.len != count) {
            PyErr_SetString(PyExc_ValueError, "keep must hold one byte per element");
            goto done;
        }
    }
    if (k0 > 0xFFFFFFFFull || k1 > 0xFFFFFFFFull || threshold > 0x100000000ull ||
        threshold % 512 != 0 || (count > 0 && offset > UINT64_MAX - (count - 1))) {
        PyErr_SetString(PyExc_ValueError,
                        "key words must be 32-bit, threshold a multiple of 512 up to 2**32, and "
                        "offset + count at most 2**64");
        goto done;
    }
    if (threads < 1 || threads > MAX_THREADS || grain < 1) {
        PyErr_Format(PyExc_ValueError, "threads must be from 1 to %d and grain at least 1",
                     MAX_THREADS);
        goto done;
    }
    if (scaled) {
        factor = PyFloat_AsDouble(factor_object);
        if (factor == -1.0 && PyErr_Occurred()) goto done;
    }
    struct pass pass = {DTYPES[found].dtype, (size_t)itemsize, (const char *)x.buf, (char *)y.buf,
                        have_keep ? (uint8_t *)keep.buf : NULL, (uint32_t)k0, (uint32_t)k1,
                        offset, (uint32_t)(threshold >> 9), scaled, factor, count, 1, 0, 0, 0};
    unsigned split_over;
    Py_BEGIN_ALLOW_THREADS
    split_over = run_parallel(&pass, (unsigned)threads, (uint64_t)grain, (uint64_t)openmp_grain);
    Py_END_ALLOW_THREADS
    result = PyLong_FromUnsignedLong(split_over);
done:
    if (have_keep) PyBuffer_Release(&keep);
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    return result;
}

PyDoc_STRVAR(torch_threading_doc,
"torch_threading()\n--\n\n"
"Which threads the parts of a call with openmp_grain (a torch tensor's) run on now: 'openmp'\n"
"where torch is loaded, its OpenMP runtime found, and this is not a child forked after this\n"
"module was loaded; else THREADING.");

static PyObject *torch_threading(PyObject *module, PyObject *unused) {
#if defined(XDROP_OPENMP)
    if (torch_openmp() != NULL) return PyUnicode_FromString("openmp");
#endif
    return PyUnicode_FromString(XDROP_THREADING);
}

static PyMethodDef methods[] = {
    {"dropout", dropout, METH_VARARGS, dropout_doc},
    {"torch_threading", torch_threading, METH_NOARGS, torch_threading_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "xdrop._kernel",
    "Mask stream v1 and dropout compiled: one pass, no temporaries (see xdrop.kernel).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__kernel(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
#if defined(XDROP_OPENMP)
    pthread_atfork(NULL, NULL, note_fork);
#endif
    /* how a call's parts run without OpenMP: "pthreads", "windows", or "none" (in turn) */
    if (PyModule_AddStringConstant(m, "THREADING", XDROP_THREADING) < 0 ||
        PyModule_AddIntConstant(m, "MAX_THREADS", MAX_THREADS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
