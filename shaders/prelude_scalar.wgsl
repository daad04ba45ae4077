// Width prelude for the scalar variant: one element per item.
alias V = f32;
alias VU = u32;
alias VB = bool;
const W: u32 = 1u;

fn lane(v: V, l: u32) -> f32 {
    return v;
}

fn splat(s: f32) -> V {
    return s;
}

fn set_lane(v: V, l: u32, s: f32) -> V {
    return s;
}
