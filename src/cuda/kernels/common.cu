// Shared by every kernel below. Compiled once per run by NVRTC (see ../gpu.rs).
// Activations live in CNHW order (channel, image, row, column): a convolution is then one
// GEMM over the whole batch and a BatchNorm channel is one contiguous run.
typedef long long i64;

// Every buffer holds fewer than 2^31 elements (the host checks), so indices are 32-bit:
// 64-bit division is emulated on the GPU and cost more than the memory traffic.
typedef unsigned int u32;

// Grid-stride loop over [0, n).
#define FOR_EACH(t, n) for (u32 t = blockIdx.x * blockDim.x + threadIdx.x; t < (u32)(n); t += gridDim.x * blockDim.x)

// Sum of `v` over the block (blockDim.x a power of two, at most 1024); every thread gets it.
__device__ float block_sum(float v) {
    __shared__ float sh[1024];
    int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

// Neither NaN nor infinite (NaN fails every comparison).
__device__ bool is_finite(float x) { return fabsf(x) <= 3.402823466e38f; }
