// BatchNorm2d in train mode on x [C, N] (N = batch * h * w values of each channel),
// one block per channel, optionally followed by a rectifier (rect = 1, negative slope
// `slope`) in the same pass, as ../batch_norm2d.rs.

// y = rect(gamma (x - mean) inv_std + beta); keeps mean and inv_std for the backward and
// moves the running statistics (the unbiased variance) by `momentum`.
extern "C" __global__ void batch_norm_forward(const float* x, float* y, const float* gamma, const float* beta,
                                              float* running_mean, float* running_var, float* save_mean,
                                              float* save_inv_std, i64 n, float eps, float momentum,
                                              float unbiased, int rect, float slope) {
    int c = blockIdx.x;
    const float* xc = x + c * n;
    float* yc = y + c * n;
    float s = 0.0f;
    for (i64 i = threadIdx.x; i < n; i += blockDim.x) s += xc[i];
    float mean = block_sum(s) / (float)n;
    float q = 0.0f;
    for (i64 i = threadIdx.x; i < n; i += blockDim.x) {
        float d = xc[i] - mean;
        q += d * d;
    }
    float var = block_sum(q) / (float)n;
    float inv_std = 1.0f / sqrtf(var + eps);
    if (threadIdx.x == 0) {
        save_mean[c] = mean;
        save_inv_std[c] = inv_std;
        running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * mean;
        running_var[c] = (1.0f - momentum) * running_var[c] + momentum * var * unbiased;
    }
    float a = gamma[c] * inv_std;
    float b = beta[c] - mean * a;
    for (i64 i = threadIdx.x; i < n; i += blockDim.x) {
        float z = xc[i] * a + b;
        yc[i] = (rect && !(z > 0.0f)) ? slope * z : z;
    }
}

// Backward from the kept input x: dgamma, dbeta, and (need_dx) dy overwritten with dx.
extern "C" __global__ void batch_norm_backward(const float* x, float* dy, const float* gamma, const float* beta,
                                               const float* mean, const float* inv_std, float* dgamma,
                                               float* dbeta, i64 n, int rect, float slope, int need_dx) {
    int c = blockIdx.x;
    const float* xc = x + c * n;
    float* dc = dy + c * n;
    float mu = mean[c], is = inv_std[c];
    float a = gamma[c] * is;
    float b = beta[c] - mu * a;
    float s1 = 0.0f, s2 = 0.0f;
    for (i64 i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xc[i], d = dc[i];
        if (rect && !(v * a + b > 0.0f)) d *= slope;
        s1 += d;
        s2 += d * (v - mu);
    }
    float sum_d = block_sum(s1);
    float sum_dx = block_sum(s2) * is;
    if (threadIdx.x == 0) {
        dgamma[c] = sum_dx;
        dbeta[c] = sum_d;
    }
    if (!need_dx) return;
    float k = a / (float)n;
    for (i64 i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xc[i], d = dc[i];
        if (rect && !(v * a + b > 0.0f)) d *= slope;
        float xhat = (v - mu) * is;
        dc[i] = k * ((float)n * d - sum_d - xhat * sum_dx);
    }
}
