//! Numbers for humans, shared by the printed summary, the `compare` table and the plots'
//! axis labels.

/// A figure for humans: integers without decimals, others with three.
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}
