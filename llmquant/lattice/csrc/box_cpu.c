/* Box-code CPU kernels: exact decode, fused decode-GEMV and the exact nearest-codeword encode.
 *
 * Built at first use by llmquant/lattice/native.py (gcc -O3 -march=native -ffp-contract=off, no OpenMP:
 * one thread per call) and called through ctypes with raw pointers; the Python side checks every shape,
 * dtype and contiguity before the call.  The spec of every function is the PyTorch code named in its
 * comment; fp contraction is off so each product and sum is rounded as PyTorch rounds it.
 *
 * Word layout (llmquant/lattice/box.py): a word of W = 8b + 8 bits holds u_i at bits [b i, b i + b)
 * (i = 0..7) and the top byte t = m | j << M at bits [8b, 8b + 8).  Coordinate pair (2p, 2p+1) decodes to
 * PAIRS[idx_p], idx_p = ((w >> 2bp) & (2^(2b) - 1)) | KAP[t][p], KAP[t][p] = kappa_p(t) << 2b
 * (llmquant/lattice/box_lut.py: kappa_p = h_2p | h_2p+1 << 1 | j << 2).  PAIRS holds the exact fp32 pairs
 * (beta_j lambda[l_lo], beta_j lambda[l_hi]).
 *
 * Word streams: row r starts at byte r * row_bytes of `words`; word v of a row at byte v * word_bytes, read
 * little-endian from wb = b + 1 bytes (packed stream: word_bytes = wb) or from an int32 element
 * (word_bytes = 4, unpacked words, masked to W bits).
 */
#include <stdint.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

static inline uint32_t read_word(const uint8_t *p, int wb) {
    uint32_t w = 0;
    if (wb == 4) {
        memcpy(&w, p, 4);
    } else if (wb == 3) {
        w = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16);
    } else {
        w = (uint32_t)p[0] | ((uint32_t)p[1] << 8);
    }
    return w;
}

/* out[r, 8v + i] = PAIRS value (times scales[r] when scales != NULL: fp32 v * s, one rounding), the
 * values of box_lut.decode_flat(codec, words, float32, scales).  out: [rows, 8 nw] fp32 contiguous. */
void box_decode_f32(const uint8_t *words, int64_t row_bytes, int64_t word_bytes, int b, int64_t rows,
                    int64_t nw, const uint16_t *kap, const float *pairs, const float *scales, float *out) {
    const int wb = (word_bytes == 4) ? 4 : b + 1;
    const uint32_t um = (1u << (2 * b)) - 1;
    const int tsh = 8 * b;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *row = words + r * row_bytes;
        float *o = out + r * 8 * nw;
        const float s = scales ? scales[r] : 1.0f;
        for (int64_t v = 0; v < nw; v++) {
            const uint32_t w = read_word(row + v * word_bytes, wb);
            const uint16_t *k = kap + 4 * ((w >> tsh) & 0xFF);
            for (int p = 0; p < 4; p++) {
                const float *pr = pairs + 2 * (((w >> (2 * b * p)) & um) | k[p]);
                if (scales) {
                    o[8 * v + 2 * p] = pr[0] * s;
                    o[8 * v + 2 * p + 1] = pr[1] * s;
                } else {
                    o[8 * v + 2 * p] = pr[0];
                    o[8 * v + 2 * p + 1] = pr[1];
                }
            }
        }
    }
}

/* y[m, n] = scales[n] * sum_k x[m, k] W0[n, k] (+ bias[n]), W0 = the unscaled decoded rows (beta lambda):
 * the decode-GEMV of a packed linear without a dense weight.  x: [M, 8 nw] fp32 contiguous, y: [M, ldy]
 * (row n of the weight = column n0 + n of y), rows = N.  Sums run in 8 lanes per input row (lane i
 * accumulates coordinates i mod 8 of every word), then lanes are added pairwise: a different order from
 * F.linear's (results agree to fp32 rounding, not bit for bit). */
#ifdef __AVX2__
/* The 8 decoded (unscaled) values of word w: the four pair indices from one variable shift of the
 * broadcast word, one 4 x 64-bit gather of the pairs (pair p = floats 2p, 2p + 1). */
static inline __m256 decode8_avx(uint32_t w, int b, const uint16_t *kap, const float *pairs, __m128i shifts,
                                 __m128i um) {
    const __m128i k = _mm_cvtepu16_epi32(_mm_loadl_epi64((const __m128i *)(kap + 4 * ((w >> (8 * b)) & 0xFF))));
    const __m128i idx = _mm_or_si128(_mm_and_si128(_mm_srlv_epi32(_mm_set1_epi32((int)w), shifts), um), k);
    return _mm256_castsi256_ps(_mm256_i32gather_epi64((const long long *)pairs, idx, 8));
}

static inline float hsum8(__m256 a) {
    float t[8];
    _mm256_storeu_ps(t, a);
    return ((t[0] + t[4]) + (t[2] + t[6])) + ((t[1] + t[5]) + (t[3] + t[7]));
}

/* box_gemv_f32 for unpacked or b = 3 words (word_bytes == 4): two accumulators per input row (even and odd
 * words) so consecutive FMAs do not wait on each other; up to 4 input rows share each decoded word. */
static void gemv_avx(const uint8_t *words, int64_t row_bytes, int b, int64_t rows, int64_t nw,
                     const uint16_t *kap, const float *pairs, const float *scales, const float *bias,
                     const float *x, int64_t M, float *y, int64_t ldy) {
    const __m128i shifts = _mm_setr_epi32(0, 2 * b, 4 * b, 6 * b), um = _mm_set1_epi32((1 << (2 * b)) - 1);
    const int64_t K = 8 * nw;
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const int mb = (M - m0) < 4 ? (int)(M - m0) : 4;
        const float *x0 = x + m0 * K;
        for (int64_t r = 0; r < rows; r++) {
            const uint32_t *row = (const uint32_t *)(words + r * row_bytes);
            __m256 a0[4], a1[4];
            for (int mm = 0; mm < 4; mm++) a0[mm] = a1[mm] = _mm256_setzero_ps();
            int64_t v = 0;
            for (; v + 1 < nw; v += 2) {
                const __m256 d0 = decode8_avx(row[v], b, kap, pairs, shifts, um);
                const __m256 d1 = decode8_avx(row[v + 1], b, kap, pairs, shifts, um);
                for (int mm = 0; mm < mb; mm++) {
                    a0[mm] = _mm256_fmadd_ps(d0, _mm256_loadu_ps(x0 + mm * K + 8 * v), a0[mm]);
                    a1[mm] = _mm256_fmadd_ps(d1, _mm256_loadu_ps(x0 + mm * K + 8 * v + 8), a1[mm]);
                }
            }
            if (v < nw) {
                const __m256 d0 = decode8_avx(row[v], b, kap, pairs, shifts, um);
                for (int mm = 0; mm < mb; mm++)
                    a0[mm] = _mm256_fmadd_ps(d0, _mm256_loadu_ps(x0 + mm * K + 8 * v), a0[mm]);
            }
            for (int mm = 0; mm < mb; mm++) {
                float s = hsum8(_mm256_add_ps(a0[mm], a1[mm])) * scales[r];
                if (bias) s += bias[r];
                y[(m0 + mm) * ldy + r] = s;
            }
        }
    }
}
#endif

void box_gemv_f32(const uint8_t *words, int64_t row_bytes, int64_t word_bytes, int b, int64_t rows,
                  int64_t nw, const uint16_t *kap, const float *pairs, const float *scales, const float *bias,
                  const float *x, int64_t M, float *y, int64_t ldy) {
    const int wb = (word_bytes == 4) ? 4 : b + 1;
    const uint32_t um = (1u << (2 * b)) - 1;
    const int tsh = 8 * b;
    const int64_t K = 8 * nw;
#ifdef __AVX2__
    if (word_bytes == 4) {
        gemv_avx(words, row_bytes, b, rows, nw, kap, pairs, scales, bias, x, M, y, ldy);
        return;
    }
#endif
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const int mb = (M - m0) < 4 ? (int)(M - m0) : 4;
        for (int64_t r = 0; r < rows; r++) {
            const uint8_t *row = words + r * row_bytes;
            float acc[4][8];
            memset(acc, 0, sizeof(acc));
            for (int64_t v = 0; v < nw; v++) {
                const uint32_t w = read_word(row + v * word_bytes, wb);
                const uint16_t *k = kap + 4 * ((w >> tsh) & 0xFF);
                float d[8];
                for (int p = 0; p < 4; p++) {
                    const float *pr = pairs + 2 * (((w >> (2 * b * p)) & um) | k[p]);
                    d[2 * p] = pr[0];
                    d[2 * p + 1] = pr[1];
                }
                for (int mm = 0; mm < mb; mm++) {
                    const float *xv = x + (m0 + mm) * K + 8 * v;
                    for (int i = 0; i < 8; i++) acc[mm][i] = __builtin_fmaf(d[i], xv[i], acc[mm][i]);
                }
            }
            for (int mm = 0; mm < mb; mm++) {
                const float *a = acc[mm];
                float s = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
                s *= scales[r];
                if (bias) s += bias[r];
                y[(m0 + mm) * ldy + r] = s;
            }
        }
    }
}

/* The exact nearest box codeword of each 8-vector y[v] (llmquant/lattice/box_encode.py: _search + _chunk,
 * the same fp32 ops in the same order, so the same (j, m), words and x_hat bit for bit):
 *   t = y / beta_j;  per parity p (slot 0 = parity 1, slot 1 = parity 0):
 *     uniform levels: U = clamp(rint((t - off_p) * 0.5), 0, 2^b - 1), L = off_p + 2 U,  off_p = p - 2^b + 1/2
 *     level table:    U = #{mids_p < t} (mids_p ascending, 2^b - 1 of them), L = levels[2 U + p]
 *     per-beta tables (mode 2): the same with beta j's own table, levels + j 2^(b+1) and mids + 2 j (2^b - 1)
 *     e = (t - L)^2
 *   E[j, m] = (sum over k = 0..15 of S[m, k] e_k, k < 8: slot 0 coordinate k, k >= 8: slot 1 coordinate k - 8,
 *             S = [H, 1 - H], summed sequentially in k: torch's matmul order, checked bit-equal in tests)
 *             * bsq_j,   bsq_j = fl(beta_j * beta_j)
 *   (j, m) = first minimum over j |C| + m (ties to the smallest).
 * Outputs (any may be NULL): j_out, m_out int64 [n]; u_out int64 [n, 8]; words int32 [n] (u_i << b i | (j |C| + m)
 * << 8b, low 32 bits); xhat  fp32 [n, 8] = beta_j * L.  nc = |C| <= 128, k <= 16, b <= 3. */
#ifdef __AVX2__
/* encode_one for uniform levels, one 8-vector per __m256 (the same IEEE ops: div, round-to-nearest-even,
 * max/min clamp of finite values, add, sub, mul; the E sums as the scalar code: S e_k is e_k or +0).  The
 * sums of 8 (beta, codeword-block) pairs run interleaved: each is still summed sequentially in k. */
static inline void encode_one_avx(const float *yv, int b, int nc, int kb, const float *betas, const float *bsq,
                                  const float *ST, float *E, float U[][2][8], float L[][2][8]) {
    const int nl = 1 << b;
    const __m256 y = _mm256_loadu_ps(yv), half = _mm256_set1_ps(0.5f), two = _mm256_set1_ps(2.0f);
    const __m256 zero = _mm256_setzero_ps(), hi = _mm256_set1_ps((float)(nl - 1));
    float e[16][16];
    for (int j = 0; j < kb; j++) {
        const __m256 t = _mm256_div_ps(y, _mm256_set1_ps(betas[j]));
        for (int s = 0; s < 2; s++) {
            const int p = 1 - s;
            const __m256 off = _mm256_set1_ps((float)p - (float)nl + 0.5f);
            __m256 u = _mm256_round_ps(_mm256_mul_ps(_mm256_sub_ps(t, off), half),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            u = _mm256_min_ps(_mm256_max_ps(u, zero), hi);
            const __m256 l = _mm256_add_ps(off, _mm256_mul_ps(two, u));
            const __m256 d = _mm256_sub_ps(t, l);
            _mm256_storeu_ps(U[j][s], u);
            _mm256_storeu_ps(L[j][s], l);
            _mm256_storeu_ps(e[j] + 8 * s, _mm256_mul_ps(d, d));
        }
    }
    const int blocks = nc / 8, chains = kb * blocks;
    for (int c0 = 0; c0 < chains; c0 += 8) {
        const int nch = chains - c0 < 8 ? chains - c0 : 8;
        __m256 acc[8];
        int cj[8], cm[8];
        for (int c = 0; c < 8; c++) {
            acc[c] = zero;
            const int cc = c0 + (c < nch ? c : 0);
            cj[c] = cc / blocks;
            cm[c] = 8 * (cc % blocks);
        }
        for (int k = 0; k < 16; k++)
            for (int c = 0; c < 8; c++)
                acc[c] = _mm256_add_ps(acc[c], _mm256_and_ps(_mm256_loadu_ps(ST + k * nc + cm[c]),
                                                             _mm256_set1_ps(e[cj[c]][k])));
        for (int c = 0; c < nch; c++)
            _mm256_storeu_ps(E + cj[c] * nc + cm[c], _mm256_mul_ps(acc[c], _mm256_set1_ps(bsq[cj[c]])));
    }
}

/* the first row of E [rows] equal to its minimum (rows % 8 == 0, finite or +inf entries) */
static inline int first_min_avx(const float *E, int rows) {
    __m256 mn = _mm256_loadu_ps(E);
    for (int r = 8; r < rows; r += 8) mn = _mm256_min_ps(mn, _mm256_loadu_ps(E + r));
    float tmp[8];
    _mm256_storeu_ps(tmp, mn);
    float m = tmp[0];
    for (int i = 1; i < 8; i++) m = tmp[i] < m ? tmp[i] : m;
    const __m256 mv = _mm256_set1_ps(m);
    for (int r = 0; r < rows; r += 8) {
        const int bits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(E + r), mv, _CMP_EQ_OQ));
        if (bits) return r + __builtin_ctz(bits);
    }
    return 0;
}
#endif

static inline void encode_one(const float *yv, int b, int nc, int kb, const float *betas, const float *bsq,
                              const float *ST, const int uniform, const float *levels,
                              const float *mids, float *E, float U[][2][8], float L[][2][8]) {
    const int nl = 1 << b;
    const float hi = (float)(nl - 1);
    const int per_j = uniform == 2;  /* level mode: 1 uniform, 0 one table, 2 one table per beta */
    for (int j = 0; j < kb; j++) {
        float t[8], e[16];
        for (int i = 0; i < 8; i++) t[i] = yv[i] / betas[j];
        const float *lvj = per_j ? levels + j * 2 * nl : levels;
        for (int s = 0; s < 2; s++) {
            const int p = 1 - s;
            if (uniform == 1) {
                const float off = (float)p - (float)nl + 0.5f;
                for (int i = 0; i < 8; i++) {
                    float u = __builtin_rintf((t[i] - off) * 0.5f);
                    u = u < 0.0f ? 0.0f : (u > hi ? hi : u);
                    const float l = off + 2.0f * u;
                    const float d = t[i] - l;
                    U[j][s][i] = u;
                    L[j][s][i] = l;
                    e[8 * s + i] = d * d;
                }
            } else {
                const float *md = mids + ((per_j ? 2 * j : 0) + s) * (nl - 1);
                for (int i = 0; i < 8; i++) {
                    int c = 0;
                    for (int q = 0; q < nl - 1; q++) c += (t[i] > md[q]);
                    const float l = lvj[2 * c + p];
                    const float d = t[i] - l;
                    U[j][s][i] = (float)c;
                    L[j][s][i] = l;
                    e[8 * s + i] = d * d;
                }
            }
        }
        /* E[j, m] = sum_k S[m, k] e_k, sequentially in k, S in {0, 1}: what torch's matmul does (0 e_k = +0
         * leaves the sum unchanged), vectorized over the codewords m */
        float *Ej = E + j * nc;
        for (int m = 0; m < nc; m++) Ej[m] = 0.0f;
        for (int k = 0; k < 16; k++) {
            const float ek = e[k];
            const float *sk = ST + k * nc;
            for (int m = 0; m < nc; m++) Ej[m] += sk[m] != 0 ? ek : 0.0f;
        }
        const float q = bsq[j];
        for (int m = 0; m < nc; m++) Ej[m] *= q;
    }
}

/* The word of the winning row best = j |C| + m (u_i << b i | best << 8b, low 32 bits), its u_i (u8, optional)
 * and its values (beta_j L) * s (xh8, optional; s = 1 leaves the products unchanged). */
static inline uint32_t assemble(int best, int b, int nc, const uint8_t *H, const float *betas, float U[][2][8],
                                float L[][2][8], float s, int64_t *u8, float *xh8) {
    const int bj = best / nc, bm = best % nc;
    const uint8_t *h = H + 8 * bm;
    uint64_t w = 0;
    for (int i = 0; i < 8; i++) {
        const int sl = h[i] ? 0 : 1;
        const int64_t u = (int64_t)U[bj][sl][i];
        if (u8) u8[i] = u;
        w |= (uint64_t)u << (b * i);
        if (xh8) xh8[i] = (betas[bj] * L[bj][sl][i]) * s;
    }
    w |= (uint64_t)best << (8 * b);
    return (uint32_t)(w & 0xFFFFFFFFu);
}

static inline void finish(int best, int64_t v, int b, int nc, const uint8_t *H, const float *betas,
                          float U[][2][8], float L[][2][8], int64_t *u_out, int32_t *words, float *xhat,
                          int64_t *j_out, int64_t *m_out) {
    const uint32_t w = assemble(best, b, nc, H, betas, U, L, 1.0f, u_out ? u_out + 8 * v : 0,
                                xhat ? xhat + 8 * v : 0);
    if (words) words[v] = (int32_t)w;
    if (j_out) j_out[v] = best / nc;
    if (m_out) m_out[v] = best % nc;
}

typedef struct {
    int b, nc, kb, uniform;
    const float *betas, *bsq, *levels, *mids;
    const uint8_t *H;
    float ST[16 * 128];
} enc_ctx;

static void ctx_init(enc_ctx *c, int b, int nc, int kb, const float *betas, const float *bsq, const uint8_t *H,
                     int uniform, const float *levels, const float *mids) {
    c->b = b; c->nc = nc; c->kb = kb; c->uniform = uniform;
    c->betas = betas; c->bsq = bsq; c->H = H; c->levels = levels; c->mids = mids;
    /* ST[k, m] = S[m, k] = [H, 1 - H][m, k] */
    for (int m = 0; m < nc; m++)
        for (int i = 0; i < 8; i++) {
            const uint32_t one = 0xFFFFFFFFu, nil = 0;  /* all-ones bits: selected (AND mask), +0: not */
            memcpy(&c->ST[i * nc + m], H[8 * m + i] ? &one : &nil, 4);
            memcpy(&c->ST[(8 + i) * nc + m], H[8 * m + i] ? &nil : &one, 4);
        }
}

/* the nearest codeword of one 8-vector: returns the row j |C| + m; U, L hold every (beta, parity) candidate */
static inline int nearest_one(const enc_ctx *c, const float *yv, float U[][2][8], float L[][2][8]) {
    float E[16 * 128];
    const int rows = c->kb * c->nc;
#ifdef __AVX2__
    if (c->uniform == 1 && c->nc % 8 == 0) {
        encode_one_avx(yv, c->b, c->nc, c->kb, c->betas, c->bsq, c->ST, E, U, L);
        return first_min_avx(E, rows);
    }
#endif
    if (c->uniform == 1)
        encode_one(yv, c->b, c->nc, c->kb, c->betas, c->bsq, c->ST, 1, c->levels, c->mids, E, U, L);
    else if (c->uniform == 2)
        encode_one(yv, c->b, c->nc, c->kb, c->betas, c->bsq, c->ST, 2, c->levels, c->mids, E, U, L);
    else
        encode_one(yv, c->b, c->nc, c->kb, c->betas, c->bsq, c->ST, 0, c->levels, c->mids, E, U, L);
    /* the first minimum (ties to the smallest j |C| + m): min first, then the first row equal to it */
    float mn = E[0];
    for (int r = 1; r < rows; r++) mn = E[r] < mn ? E[r] : mn;
    int best = 0;
    while (best < rows - 1 && !(E[best] == mn)) best++;
    return best;
}

void box_encode_f32(const float *y, int64_t n, int b, int nc, int kb, const float *betas, const float *bsq,
                    const uint8_t *H, int uniform, const float *levels, const float *mids, int64_t *j_out,
                    int64_t *m_out, int64_t *u_out, int32_t *words, float *xhat) {
    float U[16][2][8], L[16][2][8];
    enc_ctx c;
    ctx_init(&c, b, nc, kb, betas, bsq, H, uniform, levels, mids);
    for (int64_t v = 0; v < n; v++) {
        const int best = nearest_one(&c, y + 8 * v, U, L);
        finish(best, v, b, nc, H, betas, U, L, u_out, words, xhat, j_out, m_out);
    }
}

/* RowQuantizer("box").quantize_rows / encode_rows of rows x [R, K] (float32), given rms[r] = sqrt(mean(x[r]^2))
 * as torch computes it (llmquant/quant/activations.py: box_row_scale, then codec.fake_quant / encode of x / s;
 * torch's sum order and its sqrt, which is not always correctly rounded, stay torch's):
 *   s = fp16(rms) back to fp32 (1 where rms is not > 0);  y = x / s;  nearest codeword of each
 *   8-vector of y;  out = (beta_j L) * s,  words as box_encode_f32.
 * scales[r] = s.  Returns the number of non-finite entries of y (the caller raises; outputs then undefined). */
int64_t box_quantize_rows_f32(const float *x, const float *rms, int64_t R, int64_t K, int b, int nc, int kb,
                              const float *betas, const float *bsq, const uint8_t *H, int uniform,
                              const float *levels, const float *mids, float *scales, float *out,
                              int32_t *words) {
    float U[16][2][8], L[16][2][8];
    enc_ctx c;
    ctx_init(&c, b, nc, kb, betas, bsq, H, uniform, levels, mids);
    int64_t bad = 0;
    for (int64_t r = 0; r < R; r++) {
        float s = rms[r];
        s = s > 0.0f ? s : 1.0f;
        s = (float)(_Float16)s;
        scales[r] = s;
        const float *xr = x + r * K;
        for (int64_t v = 0; v < K / 8; v++) {
            float yv[8];
            for (int i = 0; i < 8; i++) {
                yv[i] = xr[8 * v + i] / s;
                bad += !__builtin_isfinite(yv[i]);
            }
            const int best = nearest_one(&c, yv, U, L);
            const uint32_t w = assemble(best, b, nc, H, betas, U, L, s, 0, out ? out + r * K + 8 * v : 0);
            if (words) words[r * (K / 8) + v] = (int32_t)w;
        }
    }
    return bad;
}

/* y[m, n] = sum_k x[m, k] W[n, k] (+ bias[n]) with W stored as 16-bit floats (half = 0: bfloat16, exact upcast
 * by a 16-bit shift; half = 1: IEEE float16, F16C / _Float16 upcast), summed in fp32 FMA lanes (8 lanes,
 * two accumulators), no fp32 copy of W: the stored lm_head of llmquant/models/embed_dtype.py at decode sizes.
 * x: [M, K] fp32 contiguous; W: [rows, K] contiguous; y: [M, ldy]. */
static inline float f16u_to_f32(uint16_t h, int half) {
    if (half) {
        _Float16 v;
        memcpy(&v, &h, 2);
        return (float)v;
    }
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void half_gemv_f32(const uint16_t *w, int half, int64_t rows, int64_t K, const float *bias, const float *x,
                   int64_t M, float *y, int64_t ldy) {
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const int mb = (M - m0) < 4 ? (int)(M - m0) : 4;
        const float *x0 = x + m0 * K;
        for (int64_t r = 0; r < rows; r++) {
            const uint16_t *wr = w + r * K;
            float s[4] = {0, 0, 0, 0};
            int64_t k = 0;
#if defined(__AVX2__) && defined(__F16C__)
            __m256 a0[4], a1[4];
            for (int mm = 0; mm < 4; mm++) a0[mm] = a1[mm] = _mm256_setzero_ps();
            for (; k + 16 <= K; k += 16) {
                const __m128i h0 = _mm_loadu_si128((const __m128i *)(wr + k));
                const __m128i h1 = _mm_loadu_si128((const __m128i *)(wr + k + 8));
                __m256 d0, d1;
                if (half) {
                    d0 = _mm256_cvtph_ps(h0);
                    d1 = _mm256_cvtph_ps(h1);
                } else {
                    d0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h0), 16));
                    d1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h1), 16));
                }
                for (int mm = 0; mm < mb; mm++) {
                    a0[mm] = _mm256_fmadd_ps(d0, _mm256_loadu_ps(x0 + mm * K + k), a0[mm]);
                    a1[mm] = _mm256_fmadd_ps(d1, _mm256_loadu_ps(x0 + mm * K + k + 8), a1[mm]);
                }
            }
            for (int mm = 0; mm < mb; mm++) s[mm] = hsum8(_mm256_add_ps(a0[mm], a1[mm]));
#endif
            for (; k < K; k++) {
                const float d = f16u_to_f32(wr[k], half);
                for (int mm = 0; mm < mb; mm++) s[mm] = __builtin_fmaf(d, x0[mm * K + k], s[mm]);
            }
            for (int mm = 0; mm < mb; mm++) y[(m0 + mm) * ldy + r] = bias ? s[mm] + bias[r] : s[mm];
        }
    }
}
