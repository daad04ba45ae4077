// Width prelude for the vec4 variant: four elements per item, either four
// positions of one channel (S % 4 == 0) or four channels of one row (S == 1, C % 4 == 0).
alias V = vec4<f32>;
alias VU = vec4<u32>;
alias VB = vec4<bool>;
const W: u32 = 4u;

fn lane(v: V, l: u32) -> f32 {
    return v[l];
}

fn splat(s: f32) -> V {
    return V(s);
}

fn set_lane(v: V, l: u32, s: f32) -> V {
    var r = v;
    r[l] = s;
    return r;
}
