// im2col and its adjoint col2im, between an image tensor x [C, B, H, W] and the column
// matrix col [C*KH*KW, B*OH*OW]:
//   col[(c, i, j), (b, oy, ox)] = x[c, b, oy*sh - ph + i*dh, ox*sw - pw + j*dw]  (0 outside).
// Conv2d runs im2col on its input (OH, OW = its output); ConvTranspose2d runs col2im into
// its output (H, W = its output, OH, OW = its input).
// Grid: x over the columns (b, oy, ox), y over the rows (c, i, j) of col.
extern "C" __global__ void im2col(const float* x, float* col, int C, int B, int H, int W, int KH, int KW,
                                  int OH, int OW, int sh, int sw, int ph, int pw, int dh, int dw) {
    u32 ncols = (u32)B * OH * OW;
    u32 row = blockIdx.y;
    int j = row % KW;
    int i = (row / KW) % KH;
    int c = row / (KW * KH);
    float* out = col + row * ncols;
    for (u32 q = blockIdx.x * blockDim.x + threadIdx.x; q < ncols; q += gridDim.x * blockDim.x) {
        u32 pix = q % ((u32)OH * OW);
        int b = q / ((u32)OH * OW);
        int oy = pix / OW, ox = pix % OW;
        int y = oy * sh - ph + i * dh;
        int xx = ox * sw - pw + j * dw;
        float v = 0.0f;
        if (y >= 0 && y < H && xx >= 0 && xx < W) v = x[(((u32)c * B + b) * H + y) * W + xx];
        out[q] = v;
    }
}

// x = col2im(col): each x element gathers the column entries that im2col copied it to.
// Grid: x over one channel's (b, y, x), y over the channels.
extern "C" __global__ void col2im(const float* col, float* x, int C, int B, int H, int W, int KH, int KW,
                                  int OH, int OW, int sh, int sw, int ph, int pw, int dh, int dw) {
    u32 ncols = (u32)B * OH * OW;
    u32 per = (u32)B * H * W;
    int c = blockIdx.y;
    for (u32 t = blockIdx.x * blockDim.x + threadIdx.x; t < per; t += gridDim.x * blockDim.x) {
        u32 pix = t % ((u32)H * W);
        int b = t / ((u32)H * W);
        int y = pix / W, xx = pix % W;
        float s = 0.0f;
        for (int i = 0; i < KH; i++) {
            int ty = y + ph - i * dh;
            if (ty < 0 || ty % sh != 0) continue;
            int oy = ty / sh;
            if (oy >= OH) continue;
            for (int j = 0; j < KW; j++) {
                int tx = xx + pw - j * dw;
                if (tx < 0 || tx % sw != 0) continue;
                int ox = tx / sw;
                if (ox >= OW) continue;
                s += col[((u32)(c * KH + i) * KW + j) * ncols + ((u32)b * OH + oy) * OW + ox];
            }
        }
        x[(u32)c * per + t] = s;
    }
}
