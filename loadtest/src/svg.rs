//! Latency percentile plots as SVG, drawn the way HdrHistogram's plotter draws them: the
//! x axis is log-scaled in 1/(1-percentile), so the tail (99%, 99.9%, …) gets room.

use std::fmt::Write as _;

use crate::numfmt::fmt_num;

const W: f64 = 900.0;
const H: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 70.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
/// The x axis ends at 99.9999%.
const MAX_NINES: f64 = 6.0;

fn x_of(percentile: f64) -> f64 {
    let nines = if percentile >= 100.0 {
        MAX_NINES
    } else {
        (1.0 / (1.0 - percentile / 100.0)).log10().min(MAX_NINES)
    };
    LEFT + nines / MAX_NINES * (W - LEFT - RIGHT)
}

fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line per `(label, [[percentile, ms], …])`.
pub fn percentile_plot(series: &[(&str, &Vec<[f64; 2]>)]) -> String {
    let max_ms = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p[1]))
        .fold(0.0, f64::max);
    let top = nice_ceiling(max_ms * 1.05);
    let y_of = |ms: f64| H - BOTTOM - ms / top * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Latency by percentile</text>"#,
        W / 2.0
    );
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"]
        .iter()
        .enumerate()
    {
        let x = LEFT + i as f64 / MAX_NINES * (W - LEFT - RIGHT);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            H - BOTTOM
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            H - BOTTOM + 18.0
        );
    }
    for i in 0..=5 {
        let ms = top * i as f64 / 5.0;
        let y = y_of(ms);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            W - RIGHT
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            fmt_num((ms * 1000.0).round() / 1000.0)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">Percentile</text>"#,
        (W + LEFT) / 2.0,
        H - 20.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">Latency (ms)</text>"#,
        H / 2.0,
        H / 2.0
    );
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", x_of(p[0]), y_of(p[1])))
            .collect();
        if !path.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
        }
        let ly = TOP + 16.0 + i as f64 * 18.0;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/>"#,
            LEFT + 12.0,
            LEFT + 36.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 42.0,
            ly + 4.0,
            escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_every_series_with_a_log_percentile_axis() {
        let a = vec![[0.0, 0.5], [90.0, 1.0], [99.0, 2.0], [100.0, 9.0]];
        let b = vec![[0.0, 0.2], [99.9, 3.0]];
        let svg = percentile_plot(&[("ringcast", &a), ("other <server>", &b)]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("99.99%"));
        assert!(svg.contains("other &lt;server&gt;"));
        // 90% sits one sixth of the way along the axis, 99% two sixths.
        assert!((x_of(90.0) - (LEFT + (W - LEFT - RIGHT) / 6.0)).abs() < 1e-6);
        assert!((x_of(99.0) - (LEFT + (W - LEFT - RIGHT) / 3.0)).abs() < 1e-6);
        assert_eq!(nice_ceiling(3.7), 5.0);
    }
}
