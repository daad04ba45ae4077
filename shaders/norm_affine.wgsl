// gamma of the element at (k, l) of a row, 1 without affine parameters. Uses
// the `gamma` binding of the kernels that import it.

#import norm

fn gamma_at(k: u32, l: u32) -> f32 {
    if ((g.flags & FLAG_AFFINE) != 0u) {
        return gamma[affine_index(k, l)];
    }
    return 1.0;
}
