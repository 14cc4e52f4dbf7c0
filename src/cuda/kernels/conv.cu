// im2col and its adjoint col2im, between an image tensor x [C, B, H, W] and the column
// matrix col [C*KH*KW, B*OH*OW]:
//   col[(c, i, j), (b, oy, ox)] = x[c, b, oy*sh - ph + i*dh, ox*sw - pw + j*dw]  (0 outside).
// Conv2d runs im2col on its input (OH, OW = its output); ConvTranspose2d runs col2im into
// its output (H, W = its output, OH, OW = its input).
extern "C" __global__ void im2col(const float* x, float* col, int C, int B, int H, int W, int KH, int KW,
                                  int OH, int OW, int sh, int sw, int ph, int pw, int dh, int dw) {
    i64 ncols = (i64)B * OH * OW;
    i64 total = (i64)C * KH * KW * ncols;
    FOR_EACH(t, total) {
        i64 q = t % ncols;
        i64 row = t / ncols;
        int j = (int)(row % KW);
        int i = (int)((row / KW) % KH);
        int c = (int)(row / ((i64)KW * KH));
        int ox = (int)(q % OW);
        int oy = (int)((q / OW) % OH);
        int b = (int)(q / ((i64)OW * OH));
        int y = oy * sh - ph + i * dh;
        int xx = ox * sw - pw + j * dw;
        float v = 0.0f;
        if (y >= 0 && y < H && xx >= 0 && xx < W) v = x[(((i64)c * B + b) * H + y) * W + xx];
        col[t] = v;
    }
}

// x = col2im(col): each x element gathers the column entries that im2col copied it to.
extern "C" __global__ void col2im(const float* col, float* x, int C, int B, int H, int W, int KH, int KW,
                                  int OH, int OW, int sh, int sw, int ph, int pw, int dh, int dw) {
    i64 ncols = (i64)B * OH * OW;
    i64 total = (i64)C * B * H * W;
    FOR_EACH(t, total) {
        int xx = (int)(t % W);
        int y = (int)((t / W) % H);
        int b = (int)((t / ((i64)W * H)) % B);
        int c = (int)(t / ((i64)W * H * B));
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
                s += col[((i64)(c * KH + i) * KW + j) * ncols + ((i64)b * OH + oy) * OW + ox];
            }
        }
        x[t] = s;
    }
}
