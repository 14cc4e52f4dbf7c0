// The VAE's own steps, as ../../vae/: the reparameterised sample, the KL terms, the
// likelihood, the bound's weights, and their backward. Rows are images (b) or samples
// (r = i * n + j, sample j of image i); K latent dimensions; D pixels per image.

// q's parameters for image i, dimension k: mu = mu_p[i * mu_rs + k] and
// logvar = s_scale * s_p[i * s_rs + k * s_cs] (s_cs = 0: one shared value, isotropic).
__device__ float logvar_at(const float* s_p, int i, int k, int s_rs, int s_cs, float s_scale) {
    return s_scale * s_p[(i64)i * s_rs + (i64)k * s_cs];
}

// One thread per sample row r: z = mu + exp(logvar / 2) eps, the log ratio
// log q(z) - log p(z) = -sum logvar / 2 + sum (z^2 - eps^2) / 2, and (j = 0) the
// closed-form KL of image i.
extern "C" __global__ void posterior_forward(const float* mu_p, int mu_rs, const float* s_p, int s_rs, int s_cs,
                                             float s_scale, const float* eps, float* z, float* ratio, float* kl,
                                             int b, int n, int K) {
    FOR_EACH(r, (i64)b * n) {
        int i = (int)(r / n);
        int j = (int)(r % n);
        float lv_sum = 0.0f, quad = 0.0f, klsum = 0.0f;
        for (int k = 0; k < K; k++) {
            float m = mu_p[(i64)i * mu_rs + k];
            float lv = logvar_at(s_p, i, k, s_rs, s_cs, s_scale);
            float e = eps[r * K + k];
            float zz = m + expf(0.5f * lv) * e;
            z[r * K + k] = zz;
            lv_sum += lv;
            quad += 0.5f * (zz * zz - e * e);
            klsum += m * m + (expm1f(lv) - lv);
        }
        ratio[r] = -0.5f * lv_sum + quad;
        if (j == 0) kl[i] = 0.5f * klsum;
    }
}

// Likelihood kinds, as Likelihood in ../../vae/likelihood.rs: 0 Gaussian with scalar
// log sigma_x (*log_sig; `half_ln_2pi` 0 for the notebook form), 1 sum of squared
// errors, 2 Bernoulli on probabilities (PyTorch's BCE, logs floored at -100),
// 3 Bernoulli on logits.
__device__ float log_lik_term(int kind, float x, float m, float inv_2var) {
    if (kind == 0) return -(x - m) * (x - m) * inv_2var;
    if (kind == 1) return -(x - m) * (x - m);
    if (kind == 2) return x * fmaxf(logf(m), -100.0f) + (1.0f - x) * fmaxf(logf(1.0f - m), -100.0f);
    return -(fmaxf(m, 0.0f) - m * x + log1pf(expf(-fabsf(m))));
}

// ll[r] = log p(x_i | out_r), one block per sample row.
extern "C" __global__ void log_likelihood(const float* x, const float* out, float* ll, int n, int D, int kind,
                                          const float* log_sig, float half_ln_2pi) {
    i64 r = blockIdx.x;
    const float* xi = x + (r / n) * D;
    const float* o = out + r * D;
    float ls = kind == 0 ? log_sig[0] : 0.0f;
    // The sum of squares first, then its scale, as the CPU.
    float inv_2var = 0.5f * expf(-(ls + ls));
    float s = 0.0f;
    for (int p = threadIdx.x; p < D; p += blockDim.x) s += log_lik_term(kind, xi[p], o[p], 1.0f);
    s = block_sum(s);
    if (threadIdx.x == 0) {
        if (kind == 0) ll[r] = s * inv_2var - (ls + half_ln_2pi) * (float)D;
        else ll[r] = s;
    }
}

// dout[r, p] = dll[r] d log p / d out, one block per sample row; for the Gaussian also
// dls[r] = dll[r] d log p / d log sigma_x (summed by `sum_into`).
extern "C" __global__ void log_likelihood_backward(const float* x, const float* out, const float* dll, float* dout,
                                                   float* dls, int n, int D, int kind, const float* log_sig) {
    i64 r = blockIdx.x;
    const float* xi = x + (r / n) * D;
    const float* o = out + r * D;
    float* d = dout + r * D;
    float g = dll[r];
    float ls = kind == 0 ? log_sig[0] : 0.0f;
    float inv_var = expf(-(ls + ls));
    float sse = 0.0f;
    for (int p = threadIdx.x; p < D; p += blockDim.x) {
        float xv = xi[p], m = o[p];
        float v;
        if (kind == 0) {
            v = g * (xv - m) * inv_var;
            sse += (xv - m) * (xv - m);
        } else if (kind == 1) {
            v = g * 2.0f * (xv - m);
        } else if (kind == 2) {
            v = -g * ((m - xv) / fmaxf(m * (1.0f - m), 1e-12f));
        } else {
            float e = expf(-fabsf(m));
            float pos = 1.0f / (1.0f + e);
            float sig = m >= 0.0f ? pos : e * pos;
            v = -g * (sig - xv);
        }
        d[p] = v;
    }
    if (kind == 0) {
        sse = block_sum(sse);
        if (threadIdx.x == 0) dls[r] = g * (sse * inv_var - (float)D);
    }
}

// One thread per image: the bound and the gradient of the loss with respect to each
// sample's log-likelihood (dll), log ratio (dratio) and the closed-form KL (dkl), as
// bound_and_weights and backward_to_posterior in ../../vae/step.rs. objective: 0 ELBO
// with the closed-form KL, 1 ELBO with the sampled log ratio, 2 IWAE. `scale` is
// d loss / d (-bound_i): 1 for a sum over the batch, 1/b for a mean.
extern "C" __global__ void bound_weights(const float* ll, const float* ratio, const float* kl, float* bound,
                                         float* dll, float* dratio, float* dkl, int b, int n, int objective,
                                         float beta, float scale) {
    FOR_EACH(i, b) {
        const float* l = ll + i * n;
        const float* q = ratio + i * n;
        float inv_n = 1.0f / (float)n;
        if (objective < 2) {
            float ml = 0.0f, mr = 0.0f;
            for (int j = 0; j < n; j++) {
                ml += l[j];
                mr += q[j];
            }
            ml *= inv_n;
            mr *= inv_n;
            bound[i] = ml - beta * (objective == 0 ? kl[i] : mr);
            for (int j = 0; j < n; j++) {
                dll[i * n + j] = -scale * inv_n;
                dratio[i * n + j] = objective == 1 ? scale * beta * inv_n : 0.0f;
            }
            dkl[i] = objective == 0 ? scale * beta : 0.0f;
        } else {
            float mx = __int_as_float(0xff800000);
            for (int j = 0; j < n; j++) mx = fmaxf(mx, l[j] - q[j]);
            float s = 0.0f;
            for (int j = 0; j < n; j++) s += expf(l[j] - q[j] - mx);
            bound[i] = mx + logf(s * inv_n);
            for (int j = 0; j < n; j++) {
                float w = expf(l[j] - q[j] - mx) / s;
                dll[i * n + j] = -scale * w;
                dratio[i * n + j] = scale * w;
            }
            dkl[i] = 0.0f;
        }
    }
}

// One block: the step's reported figures, stats = [loss, mean bound, recon, kl] (as
// LossParts), with closed = whether the KL is the closed form, mean = whether the loss
// averages over the batch. A non-finite loss marks `bad` (see adam.cu).
extern "C" __global__ void loss_stats(const float* bound, const float* ll, const float* ratio, const float* kl,
                                      float* stats, unsigned int* bad, int b, int n, int closed, int mean) {
    float sb = 0.0f, sl = 0.0f, sk = 0.0f;
    for (int i = threadIdx.x; i < b; i += blockDim.x) {
        sb += bound[i];
        if (closed) sk += kl[i];
    }
    for (int r = threadIdx.x; r < b * n; r += blockDim.x) {
        sl += ll[r];
        if (!closed) sk += ratio[r];
    }
    sb = block_sum(sb);
    sl = block_sum(sl);
    sk = block_sum(sk);
    if (threadIdx.x == 0) {
        float loss = mean ? -sb / (float)b : -sb;
        stats[0] = loss;
        stats[1] = sb / (float)b;
        stats[2] = -sl / (float)(b * n);
        stats[3] = closed ? sk / (float)b : sk / (float)(b * n);
        if (!is_finite(loss)) atomicMax(bad, 0xffffffffu);
    }
}

// out[0] = sum of v[0..n) (one block).
extern "C" __global__ void sum_into(const float* v, float* out, int n) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
    s = block_sum(s);
    if (threadIdx.x == 0) out[0] = s;
}

// One thread per image: the gradient with respect to q's parameters, from the decoder's
// dz [b n, K], the log ratio's dratio [b n] and the closed-form KL's dkl [b]:
// dmu = sum_j dz + dkl mu; dlogvar = sum_j (dz + dratio z) std eps / 2 - sum_j dratio / 2
// + dkl (e^logvar - 1) / 2; then written as the encoder's outputs (dmu at dmu_p, the
// log-scale's gradient at ds_p: ds = s_scale dlogvar, summed over k when isotropic).
extern "C" __global__ void posterior_backward(const float* mu_p, int mu_rs, const float* s_p, int s_rs, int s_cs,
                                              float s_scale, const float* eps, const float* z, const float* dz,
                                              const float* dratio, const float* dkl, float* dmu_p, float* ds_p,
                                              int b, int n, int K) {
    FOR_EACH(i, b) {
        float iso = 0.0f;
        float dr_sum = 0.0f;
        for (int j = 0; j < n; j++) dr_sum += dratio[i * n + j];
        for (int k = 0; k < K; k++) {
            float m = mu_p[(i64)i * mu_rs + k];
            float lv = logvar_at(s_p, (int)i, k, s_rs, s_cs, s_scale);
            float sd = expf(0.5f * lv);
            float gm = dkl[i] * m;
            float glv = dkl[i] * 0.5f * expm1f(lv) - 0.5f * dr_sum;
            for (int j = 0; j < n; j++) {
                i64 at = (i * (i64)n + j) * K + k;
                float d = dz[at] + dratio[i * n + j] * z[at];
                gm += d;
                glv += 0.5f * d * sd * eps[at];
            }
            dmu_p[(i64)i * mu_rs + k] = gm;
            if (s_cs == 0) iso += glv;
            else ds_p[(i64)i * s_rs + (i64)k * s_cs] = s_scale * glv;
        }
        if (s_cs == 0) ds_p[(i64)i * s_rs] = s_scale * iso;
    }
}
