// BatchNorm2d in train mode on x [C, n] (n = batch * h * w values of each channel),
// optionally followed by a rectifier (rect = 1, negative slope `slope`) in the same pass,
// as ../../nn/batch_norm2d.rs. Each channel's sums are split over S blocks (partial sums
// in part[c * S + s], then added in a fixed order), so that the whole GPU streams the
// data even when there are few channels; the results do not depend on timing.

// Slice s of channel c: [s n / S, (s + 1) n / S).
__device__ void bn_slice(i64 n, int S, int s, i64* lo, i64* hi) {
    *lo = n * s / S;
    *hi = n * (s + 1) / S;
}

// part[c S + s] = sum of x over the slice, or of (x - mean[c])^2 when `mean` is given.
extern "C" __global__ void bn_partial_stats(const float* x, float* part, i64 n, int S, const float* mean) {
    int c = blockIdx.x / S, s = blockIdx.x % S;
    i64 lo, hi;
    bn_slice(n, S, s, &lo, &hi);
    const float* xc = x + c * n;
    float m = mean ? mean[c] : 0.0f;
    float acc = 0.0f;
    for (i64 i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        float v = xc[i];
        acc += mean ? (v - m) * (v - m) : v;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

// One thread per channel: mean[c] from the partial sums.
extern "C" __global__ void bn_finish_mean(const float* part, float* mean, int C, int S, i64 n) {
    FOR_EACH(c, C) {
        float s = 0.0f;
        for (int k = 0; k < S; k++) s += part[c * S + k];
        mean[c] = s / (float)n;
    }
}

// One thread per channel: inv_std from the centred partial sums; the running statistics
// move by `momentum` (the variance unbiased).
extern "C" __global__ void bn_finish_var(const float* part, const float* mean, float* inv_std, float* running_mean,
                                         float* running_var, int C, int S, i64 n, float eps, float momentum,
                                         float unbiased) {
    FOR_EACH(c, C) {
        float s = 0.0f;
        for (int k = 0; k < S; k++) s += part[c * S + k];
        float var = s / (float)n;
        inv_std[c] = 1.0f / sqrtf(var + eps);
        running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * mean[c];
        running_var[c] = (1.0f - momentum) * running_var[c] + momentum * var * unbiased;
    }
}

// y = rect(gamma (x - mean) inv_std + beta), element-wise over [C, n].
extern "C" __global__ void bn_apply(const float* x, float* y, const float* gamma, const float* beta,
                                    const float* mean, const float* inv_std, int C, i64 n, int rect, float slope) {
    FOR_EACH(t, (u32)C * (u32)n) {
        int c = t / (u32)n;
        float a = gamma[c] * inv_std[c];
        float z = x[t] * a + (beta[c] - mean[c] * a);
        y[t] = (rect && !(z > 0.0f)) ? slope * z : z;
    }
}

// The gradient at the normalised value: dy through the rectifier, at the input it had.
__device__ float bn_dz(float v, float d, float a, float b, int rect, float slope) {
    return (rect && !(v * a + b > 0.0f)) ? slope * d : d;
}

// part1[c S + s] = sum dz, part2[c S + s] = sum dz (x - mean) over the slice.
extern "C" __global__ void bn_partial_grads(const float* x, const float* dy, const float* gamma, const float* beta,
                                            const float* mean, const float* inv_std, float* part1, float* part2,
                                            i64 n, int S, int rect, float slope) {
    int c = blockIdx.x / S, s = blockIdx.x % S;
    i64 lo, hi;
    bn_slice(n, S, s, &lo, &hi);
    const float* xc = x + c * n;
    const float* dc = dy + c * n;
    float mu = mean[c];
    float a = gamma[c] * inv_std[c];
    float b = beta[c] - mu * a;
    float s1 = 0.0f, s2 = 0.0f;
    for (i64 i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        float v = xc[i];
        float d = bn_dz(v, dc[i], a, b, rect, slope);
        s1 += d;
        s2 += d * (v - mu);
    }
    s1 = block_sum(s1);
    s2 = block_sum(s2);
    if (threadIdx.x == 0) {
        part1[blockIdx.x] = s1;
        part2[blockIdx.x] = s2;
    }
}

// One thread per channel: dbeta = sum dz, dgamma = sum dz xhat (kept in sums[C + c] too).
extern "C" __global__ void bn_finish_grads(const float* part1, const float* part2, const float* inv_std,
                                           float* dgamma, float* dbeta, float* sums, int C, int S) {
    FOR_EACH(c, C) {
        float s1 = 0.0f, s2 = 0.0f;
        for (int k = 0; k < S; k++) {
            s1 += part1[c * S + k];
            s2 += part2[c * S + k];
        }
        s2 *= inv_std[c];
        dbeta[c] = s1;
        dgamma[c] = s2;
        sums[c] = s1;
        sums[C + c] = s2;
    }
}

// dy becomes dx = gamma inv_std / n (n dz - sum dz - xhat sum dz xhat), element-wise.
extern "C" __global__ void bn_apply_grad(const float* x, float* dy, const float* gamma, const float* beta,
                                         const float* mean, const float* inv_std, const float* sums, int C, i64 n,
                                         int rect, float slope) {
    FOR_EACH(t, (u32)C * (u32)n) {
        int c = t / (u32)n;
        float mu = mean[c], is = inv_std[c];
        float a = gamma[c] * is;
        float v = x[t];
        float d = bn_dz(v, dy[t], a, beta[c] - mu * a, rect, slope);
        float xhat = (v - mu) * is;
        dy[t] = (a / (float)n) * ((float)n * d - sums[c] - xhat * sums[C + c]);
    }
}
