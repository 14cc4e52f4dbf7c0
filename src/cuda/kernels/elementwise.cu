// Biases, activations, layout changes.

// y[r, i] += bias[r] for a [rows, n] matrix (a conv's channel bias in CNHW).
extern "C" __global__ void add_row_bias(float* y, const float* bias, int rows, i64 n) {
    FOR_EACH(t, (u32)rows * (u32)n) y[t] += bias[t / (u32)n];
}

// y[r, j] += bias[j] for a [rows, cols] matrix (a Linear layer's bias).
extern "C" __global__ void add_col_bias(float* y, const float* bias, int rows, int cols) {
    FOR_EACH(t, (u32)rows * cols) y[t] += bias[t % (u32)cols];
}

// out[r] = sum_i y[r, i], one block per row (a conv's bias gradient in CNHW).
extern "C" __global__ void row_sums(const float* y, float* out, i64 n) {
    const float* yr = y + blockIdx.x * (u32)n;
    float s = 0.0f;
    for (u32 i = threadIdx.x; i < (u32)n; i += blockDim.x) s += yr[i];
    s = block_sum(s);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// out[j] = sum_r y[r, j] (a Linear layer's bias gradient).
extern "C" __global__ void col_sums(const float* y, float* out, int rows, int cols) {
    FOR_EACH(j, cols) {
        float s = 0.0f;
        for (int r = 0; r < rows; r++) s += y[(u32)r * cols + j];
        out[j] = s;
    }
}

// The per-pixel bias on x [C, B, HW]: x[c, b, p] += bias[c, p].
extern "C" __global__ void add_pixel_bias(float* x, const float* bias, int C, int B, i64 hw) {
    u32 n = (u32)hw;
    FOR_EACH(t, (u32)C * B * n) {
        u32 p = t % n;
        u32 c = t / (n * B);
        x[t] += bias[c * n + p];
    }
}

// Its gradient: dbias[c, p] = sum_b dy[c, b, p].
extern "C" __global__ void pixel_bias_grad(const float* dy, float* dbias, int C, int B, i64 hw) {
    u32 n = (u32)hw;
    FOR_EACH(t, (u32)C * n) {
        u32 p = t % n;
        u32 c = t / n;
        float s = 0.0f;
        for (int b = 0; b < B; b++) s += dy[(c * B + b) * n + p];
        dbias[t] = s;
    }
}

// dst [C, B, hw] from src [B, C, hw] (NCHW to CNHW), and back with `to_nchw` set.
extern "C" __global__ void permute_batch_channel(const float* src, float* dst, int B, int C, i64 hw, int to_nchw) {
    u32 n = (u32)hw;
    FOR_EACH(t, (u32)B * C * n) {
        u32 p = t % n;
        u32 q = t / n;
        if (to_nchw) {
            // t indexes dst [B, C, hw]; src is [C, B, hw].
            u32 c = q % C, b = q / C;
            dst[t] = src[(c * B + b) * n + p];
        } else {
            // t indexes dst [C, B, hw]; src is [B, C, hw].
            u32 b = q % B, c = q / B;
            dst[t] = src[(b * C + c) * n + p];
        }
    }
}

// Activation kinds, as in ../activation.rs: 0 rectifier (ReLU when slope = 0, else
// LeakyReLU), 1 sigmoid, 2 tanh.
__device__ float activate(float x, int kind, float slope) {
    if (kind == 0) return x > 0.0f ? x : slope * x;
    if (kind == 1) {
        // As crate::loss::sigmoid: finite for any x.
        float e = expf(-fabsf(x));
        float pos = 1.0f / (1.0f + e);
        return x >= 0.0f ? pos : e * pos;
    }
    return tanhf(x);
}

// y = act(x) in place.
extern "C" __global__ void activation_forward(float* x, i64 n, int kind, float slope) {
    FOR_EACH(t, n) x[t] = activate(x[t], kind, slope);
}

// dy *= act'(x), written from the output y = act(x) (the sign of y is the sign of x for
// the rectifiers).
extern "C" __global__ void activation_backward(const float* y, float* dy, i64 n, int kind, float slope) {
    FOR_EACH(t, n) {
        float v = y[t], g = dy[t];
        if (kind == 0) dy[t] = v > 0.0f ? g : slope * g;
        else if (kind == 1) dy[t] = g * v * (1.0f - v);
        else dy[t] = g * (1.0f - v * v);
    }
}

// y += x.
extern "C" __global__ void add_into(float* y, const float* x, i64 n) {
    FOR_EACH(t, n) y[t] += x[t];
}

// dst[r, :] = src[idx[r], :] for r < rows (a batch gathered from images kept on the GPU).
extern "C" __global__ void gather_rows(const float* src, const unsigned int* idx, float* dst, int rows, int cols) {
    FOR_EACH(t, (u32)rows * cols) {
        u32 r = t / cols, j = t % cols;
        dst[t] = src[idx[r] * (u32)cols + j];
    }
}
