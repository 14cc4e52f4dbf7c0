// Adam over every parameter at once (one flat buffer), as adam_update in ../../optim.rs,
// skipped when `bad` is set: by `find_non_finite` (0xffffffff - the first flat index of a
// NaN or infinite gradient) or by `loss_stats` (0xffffffff: a non-finite loss).

extern "C" __global__ void find_non_finite(const float* g, i64 n, unsigned int* bad) {
    FOR_EACH(t, n) {
        if (!is_finite(g[t])) atomicMax(bad, 0xffffffffu - (unsigned int)t);
    }
}

// Values below the smallest normal float become zero, as the CPU's flush.
__device__ float flush(float x) { return fabsf(x) < 1.17549435e-38f ? 0.0f : x; }

extern "C" __global__ void adam_step(float* p, const float* g, float* m, float* v, i64 n, const unsigned int* bad,
                                     float step, float bc2_sqrt, float beta1, float beta2, float eps, float wd) {
    if (*bad) return;
    FOR_EACH(t, n) {
        float gt = g[t] + wd * p[t];
        float mt = flush(beta1 * m[t] + (1.0f - beta1) * gt);
        float vt = flush(beta2 * v[t] + (1.0f - beta2) * gt * gt);
        m[t] = mt;
        v[t] = vt;
        float denom = sqrtf(vt) / bc2_sqrt + eps;
        p[t] = flush(p[t] - step * mt / denom);
    }
}

// *flag = v (clears the step's flag before the step).
extern "C" __global__ void set_flag(unsigned int* flag, unsigned int v) { *flag = v; }
