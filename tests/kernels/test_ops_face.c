/*
 * test_ops_face.c — the CPU ops of dlib's face networks against naive loops in double.
 *
 * pool2d: max and average at every geometry the ResNet and the detector use (3x3 stride 2 pad 0,
 * 2x2 stride 2 pad 0, global) and at padded ones (3x3 stride 1 pad 1, 3x2 stride 2 pad 1,0),
 * where the average counts only the elements inside the image, on odd non-square images of batch
 * 2; planning mode computes nothing. channel_affine: with and without ReLU, in place, 3-d and
 * 4-d. relu: on a strided matrix view. add_padded: channel padding (32 -> 64 as the ResNet's
 * downsampling units have it), spatial padding (3 -> 4), both at once, either operand the larger,
 * and in place.
 */
#include "kernel_test_util.h"

static fl_ctx *ctx;

/* ---- pool2d ------------------------------------------------------------------------------------- */

static void ref_pool(const float *x, int64_t B, int64_t C, int64_t H, int64_t W, int kh, int kw, int sy, int sx,
                     int py, int px, bool max, int64_t Ho, int64_t Wo, float *y) {
    for (int64_t p = 0; p < B * C; p++)
        for (int64_t i = 0; i < Ho; i++)
            for (int64_t j = 0; j < Wo; j++) {
                double acc = max ? -INFINITY : 0.0;
                int count = 0;
                /* every position of the padded window; the padding is skipped */
                for (int u = 0; u < kh; u++)
                    for (int v = 0; v < kw; v++) {
                        int64_t r = i * sy + u - py, c = j * sx + v - px;
                        if (r < 0 || r >= H || c < 0 || c >= W) continue;
                        double val = x[(p * H + r) * W + c];
                        acc = max ? (val > acc ? val : acc) : acc + val;
                        count++;
                    }
                y[(p * Ho + i) * Wo + j] = (float)(max ? acc : acc / count);
            }
}

static void pool_case(int64_t B, int64_t C, int64_t H, int64_t W, int kh, int kw, int sy, int sx, int py, int px,
                      bool max, uint64_t seed) {
    bool global = kh == 0;
    int64_t Ho = global ? 1 : 1 + (H + 2 * py - kh) / sy, Wo = global ? 1 : 1 + (W + 2 * px - kw) / sx;
    size_t nx = (size_t)(B * C * H * W), ny = (size_t)(B * C * Ho * Wo);
    float *x = fl_test_randn(nx, seed, 1.0f), *y = kt_alloc(ny), *want = kt_alloc(ny);
    kt_fill_nan(y, ny);
    if (global) ref_pool(x, B, C, H, W, (int)H, (int)W, 1, 1, 0, 0, max, 1, 1, want);
    else ref_pool(x, B, C, H, W, kh, kw, sy, sx, py, px, max, Ho, Wo, want);
    fl_tensor tx = fl_tensor_f32_4d(x, B, C, H, W), ty = fl_tensor_f32_4d(y, B, C, Ho, Wo);
    fl_op_pool2d(ctx, &tx, &ty, kh, kw, sy, sx, py, px, max);
    char what[160];
    snprintf(what, sizeof what, "%s pool %lldx%lld k=%dx%d s=%d,%d pad=%d,%d", max ? "max" : "avg", (long long)H,
             (long long)W, kh, kw, sy, sx, py, px);
    FL_EXPECT_CLOSE(what, y, want, ny, 1e-6, 1e-5);
    free(x);
    free(y);
    free(want);
}

static void test_pool2d(void) {
    for (int m = 0; m < 2; m++) {
        pool_case(2, 3, 72, 71, 3, 3, 2, 2, 0, 0, m, 1);  /* the ResNet's stem pool: 72 -> 35 */
        pool_case(2, 5, 8, 9, 2, 2, 2, 2, 0, 0, m, 2);    /* a downsampling unit's pool */
        pool_case(2, 4, 3, 3, 0, 0, 1, 1, 0, 0, m, 3);    /* global */
        pool_case(1, 2, 7, 6, 3, 3, 1, 1, 1, 1, m, 4);    /* padded: edge windows are clipped */
        pool_case(1, 2, 9, 10, 3, 2, 2, 2, 1, 0, m, 5);   /* rectangular, padding on one axis */
        pool_case(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, m, 6);    /* one pixel */
    }
    /* planning mode validates and computes nothing */
    float x[16], y[4];
    for (int i = 0; i < 16; i++) x[i] = (float)i;
    kt_fill_nan(y, 4);
    fl_tensor tx = fl_tensor_f32_4d(x, 1, 1, 4, 4), ty = fl_tensor_f32_4d(y, 1, 1, 2, 2);
    ctx->planning = true;
    fl_op_pool2d(ctx, &tx, &ty, 2, 2, 2, 2, 0, 0, true);
    ctx->planning = false;
    FL_EXPECT(isnan(y[0]) && isnan(y[3]));
    fl_op_pool2d(ctx, &tx, &ty, 2, 2, 2, 2, 0, 0, true);
    FL_EXPECT(y[0] == 5.0f && y[1] == 7.0f && y[2] == 13.0f && y[3] == 15.0f);
    fl_op_pool2d(ctx, &tx, &ty, 2, 2, 2, 2, 0, 0, false);
    FL_EXPECT(y[0] == 2.5f && y[3] == 12.5f);
}

/* ---- channel_affine and relu ------------------------------------------------------------------- */

static void affine_case(int ndim, const int64_t *shape, bool relu, bool in_place, uint64_t seed) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    int64_t C = shape[1], inner = n / (shape[0] * C);
    float *x = fl_test_randn((size_t)n, seed, 1.0f), *s = fl_test_randn((size_t)C, seed + 1, 1.0f);
    float *h = fl_test_randn((size_t)C, seed + 2, 1.0f), *want = kt_alloc((size_t)n);
    for (int64_t i = 0; i < n; i++) {
        double v = (double)x[i] * s[(i / inner) % C] + h[(i / inner) % C];
        want[i] = (float)(relu && v < 0 ? 0.0 : v);
    }
    float *y = in_place ? x : kt_alloc((size_t)n);
    fl_tensor tx = fl_tensor_make(x, FL_F32, fl_device_cpu(), ndim, shape);
    fl_tensor ty = fl_tensor_make(y, FL_F32, fl_device_cpu(), ndim, shape);
    fl_tensor ts = fl_tensor_f32_1d(s, C), th = fl_tensor_f32_1d(h, C);
    fl_op_channel_affine(ctx, &tx, &ts, &th, &ty, relu);
    char what[96];
    snprintf(what, sizeof what, "channel_affine %dd relu=%d in_place=%d", ndim, relu, in_place);
    FL_EXPECT_CLOSE(what, y, want, (size_t)n, 1e-6, 1e-6);
    if (!in_place) free(y);
    free(x);
    free(s);
    free(h);
    free(want);
}

static void test_channel_affine(void) {
    for (int r = 0; r < 2; r++)
        for (int ip = 0; ip < 2; ip++) {
            affine_case(4, (const int64_t[]){2, 5, 7, 3}, r, ip, 10 + r * 2 + ip);
            affine_case(3, (const int64_t[]){3, 4, 6}, r, ip, 20 + r * 2 + ip);
        }
}

static void test_relu(void) {
    /* a [3, 4] view with row stride 7 */
    float *x = fl_test_randn(21, 30, 1.0f), y[21];
    for (int i = 0; i < 21; i++) y[i] = 99.0f;
    fl_tensor wx = fl_tensor_f32_2d(x, 3, 7), wy = fl_tensor_f32_2d(y, 3, 7);
    fl_tensor vx = fl_tensor_slice(&wx, 1, 2, 4), vy = fl_tensor_slice(&wy, 1, 1, 4);
    fl_op_relu(ctx, &vx, &vy);
    int bad = 0;
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 7; c++) {
            float want = c >= 1 && c < 5 ? (x[r * 7 + c + 1] > 0 ? x[r * 7 + c + 1] : 0.0f) : 99.0f;
            bad += y[r * 7 + c] != want;
        }
    FL_EXPECTF(bad == 0, "%d relu outputs wrong or written outside the view", bad);
    free(x);
}

/* ---- add_padded --------------------------------------------------------------------------------- */

static void add_case(const int64_t *sa, const int64_t *sb, bool in_place_a, uint64_t seed) {
    int64_t so[4];
    for (int d = 0; d < 4; d++) so[d] = sa[d] > sb[d] ? sa[d] : sb[d];
    size_t na = (size_t)(sa[0] * sa[1] * sa[2] * sa[3]), nb = (size_t)(sb[0] * sb[1] * sb[2] * sb[3]);
    size_t no = (size_t)(so[0] * so[1] * so[2] * so[3]);
    float *a = fl_test_randn(na, seed, 1.0f), *b = fl_test_randn(nb, seed + 1, 1.0f), *want = kt_alloc(no);
    for (int64_t n = 0; n < so[0]; n++)
        for (int64_t c = 0; c < so[1]; c++)
            for (int64_t i = 0; i < so[2]; i++)
                for (int64_t j = 0; j < so[3]; j++) {
                    double v = 0;
                    if (c < sa[1] && i < sa[2] && j < sa[3]) v += a[((n * sa[1] + c) * sa[2] + i) * sa[3] + j];
                    if (c < sb[1] && i < sb[2] && j < sb[3]) v += b[((n * sb[1] + c) * sb[2] + i) * sb[3] + j];
                    want[((n * so[1] + c) * so[2] + i) * so[3] + j] = (float)v;
                }
    float *out = in_place_a ? a : kt_alloc(no);
    if (!in_place_a) kt_fill_nan(out, no);
    fl_tensor ta = fl_tensor_make(a, FL_F32, fl_device_cpu(), 4, sa);
    fl_tensor tb = fl_tensor_make(b, FL_F32, fl_device_cpu(), 4, sb);
    fl_tensor to = fl_tensor_make(out, FL_F32, fl_device_cpu(), 4, so);
    fl_op_add_padded(ctx, &ta, &tb, &to);
    char what[128];
    snprintf(what, sizeof what, "add_padded [%lld,%lld,%lld] + [%lld,%lld,%lld] in_place=%d", (long long)sa[1],
             (long long)sa[2], (long long)sa[3], (long long)sb[1], (long long)sb[2], (long long)sb[3], in_place_a);
    FL_EXPECT_CLOSE(what, out, want, no, 0.0, 1e-7);
    if (!in_place_a) free(out);
    free(a);
    free(b);
    free(want);
}

static void test_add_padded(void) {
    add_case((const int64_t[]){2, 32, 17, 17}, (const int64_t[]){2, 64, 17, 17}, false, 40); /* channels */
    add_case((const int64_t[]){1, 6, 3, 3}, (const int64_t[]){1, 6, 4, 4}, false, 41);      /* space */
    add_case((const int64_t[]){2, 8, 4, 4}, (const int64_t[]){2, 5, 3, 4}, true, 42);       /* a larger, in place */
    add_case((const int64_t[]){1, 3, 2, 5}, (const int64_t[]){1, 4, 3, 2}, false, 43);      /* both padded */
    add_case((const int64_t[]){1, 4, 5, 5}, (const int64_t[]){1, 4, 5, 5}, true, 44);       /* same shape */
}

int main(void) {
    ctx = kt_cpu_ctx();
    FL_RUN(test_pool2d);
    FL_RUN(test_channel_affine);
    FL_RUN(test_relu);
    FL_RUN(test_add_padded);
    fl_ctx_destroy(ctx);
    return fl_test_finish();
}
