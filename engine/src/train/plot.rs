//! The loss-curve picture of a run: `loss.svg` beside `metrics.jsonl`, drawn with plotters'
//! SVG backend from the metrics file itself (so a resumed run's picture covers the whole
//! run): the train loss of every step as a line, the test losses (periodic and final
//! evaluations with the adapter) as circles, and the base model's test loss as a cross at
//! its step.
//!
//! trainer.rs calls [`write_loss_curve`] after every evaluation and at the end of a run; the
//! file is replaced atomically (io.rs), so a viewer never sees half a picture. Lines of
//! metrics.jsonl that are not JSON objects with the expected numbers are skipped: the
//! picture is a view, metrics.rs owns the record.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::io::write_atomic;

/// The points of a loss curve, read from `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossPoints {
    /// `(step, train loss)` of every step record, in file order.
    pub train: Vec<(u64, f64)>,
    /// `(step, test loss)` of every evaluation with the adapter.
    pub test: Vec<(u64, f64)>,
    /// `(step, test loss)` of the base model (no adapter), if evaluated.
    pub base: Option<(u64, f64)>,
}

impl LossPoints {
    /// Parse the lines of a metrics file (`{"step", "loss", ...}` step records,
    /// `{"step", "test_loss"}` and `{"step", "base_test_loss"}` evaluations); non-finite
    /// values are left out.
    pub fn from_metrics(text: &str) -> Self {
        let mut p = LossPoints::default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let Some(step) = v.get("step").and_then(|s| s.as_u64()) else {
                continue;
            };
            let num = |k: &str| v.get(k).and_then(|x| x.as_f64()).filter(|x| x.is_finite());
            if let Some(l) = num("loss") {
                p.train.push((step, l));
            } else if let Some(l) = num("test_loss") {
                p.test.push((step, l));
            } else if let Some(l) = num("base_test_loss") {
                p.base = Some((step, l));
            }
        }
        p
    }

    fn is_empty(&self) -> bool {
        self.train.is_empty() && self.test.is_empty() && self.base.is_none()
    }
}

/// The SVG text of the loss curve of `points` (`width`×`height` pixels). `source` names the
/// run in errors.
pub fn render_svg(points: &LossPoints, width: u32, height: u32, source: &Path) -> Result<String> {
    let fail = |e: String| Error::format(source, format!("drawing the loss curve: {e}"));
    let all: Vec<(u64, f64)> = points
        .train
        .iter()
        .chain(&points.test)
        .chain(&points.base)
        .copied()
        .collect();
    let max_step = all.iter().map(|p| p.0).max().unwrap_or(1).max(1);
    let (mut lo, mut hi) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    if !(lo.is_finite() && hi.is_finite()) {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let (lo, hi) = (lo - pad, hi + pad);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("loss", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0u64..max_step, lo..hi)
            .map_err(|e| fail(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss (nats/token)")
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        if !points.train.is_empty() {
            chart
                .draw_series(LineSeries::new(points.train.iter().copied(), &BLUE))
                .map_err(|e| fail(e.to_string()))?
                .label("train")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        }
        if !points.test.is_empty() {
            chart
                .draw_series(points.test.iter().map(|&p| Circle::new(p, 4, RED.filled())))
                .map_err(|e| fail(e.to_string()))?
                .label("test")
                .legend(|(x, y)| Circle::new((x + 8, y), 4, RED.filled()));
        }
        if let Some((s, l)) = points.base {
            chart
                .draw_series(std::iter::once(Cross::new(
                    (s, l),
                    6,
                    BLACK.stroke_width(2),
                )))
                .map_err(|e| fail(e.to_string()))?
                .label("base model test")
                .legend(|(x, y)| Cross::new((x + 8, y), 6, BLACK.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    Ok(svg)
}

/// Draw `output_dir/metrics.jsonl` into `output_dir/loss.svg` (atomically). Returns whether
/// a picture was written (nothing is written while the file has no loss yet).
pub fn write_loss_curve(output_dir: &Path) -> Result<bool> {
    let metrics = output_dir.join("metrics.jsonl");
    let text = match std::fs::read_to_string(&metrics) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(&metrics, e)),
    };
    let points = LossPoints::from_metrics(&text);
    if points.is_empty() {
        return Ok(false);
    }
    let svg = render_svg(&points, 800, 480, &metrics)?;
    write_atomic(&output_dir.join("loss.svg"), svg.as_bytes())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(train: &[f64], test: &[(u64, f64)]) -> String {
        let mut s = String::from("{\"step\": 0, \"base_test_loss\": 2.5, \"test_tokens\": 9}\n");
        for (i, l) in train.iter().enumerate() {
            s += &format!("{{\"step\": {}, \"epoch\": 0, \"loss\": {l}}}\n", i + 1);
        }
        for (st, l) in test {
            s += &format!("{{\"step\": {st}, \"test_loss\": {l}}}\n");
        }
        s + "not json\n{\"no_step\": 1}\n"
    }

    /// The `points` attribute of the first blue polyline (the train curve; axes and ticks
    /// are black polylines).
    fn polyline(svg: &str) -> &str {
        let line = svg
            .lines()
            .find(|l| l.contains("<polyline") && l.contains("stroke=\"#0000FF\""))
            .expect("a blue polyline");
        let p = line.find("points=\"").expect("points") + 8;
        let end = line[p..].find('"').expect("end of points");
        &line[p..p + end]
    }

    #[test]
    fn parses_train_test_and_base_points() {
        let p = LossPoints::from_metrics(&metrics(&[2.0, 1.5, 1.2], &[(2, 1.7), (3, 1.6)]));
        assert_eq!(p.train, vec![(1, 2.0), (2, 1.5), (3, 1.2)]);
        assert_eq!(p.test, vec![(2, 1.7), (3, 1.6)]);
        assert_eq!(p.base, Some((0, 2.5)));
    }

    #[test]
    fn writes_an_svg_with_the_curve_that_follows_the_losses() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!write_loss_curve(dir.path()).unwrap(), "no metrics yet");
        let m = dir.path().join("metrics.jsonl");
        std::fs::write(&m, metrics(&[2.0, 1.5, 1.2, 1.1], &[(2, 1.7), (4, 1.4)])).unwrap();
        assert!(write_loss_curve(dir.path()).unwrap());
        let svg = std::fs::read_to_string(dir.path().join("loss.svg")).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        assert_eq!(svg.matches("<svg").count(), 1);
        // one vertex per train step; two test circles plus one in the legend
        let pts = polyline(&svg);
        assert_eq!(pts.split_whitespace().count(), 4, "{pts}");
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("\ntrain\n") && svg.contains("\ntest\n"));
        // the curve goes down the page's y axis as the loss falls (svg y grows downwards)
        let ys: Vec<f64> = pts
            .split_whitespace()
            .map(|xy| xy.split(',').nth(1).unwrap().parse().unwrap())
            .collect();
        assert!(ys.windows(2).all(|w| w[1] > w[0]), "{ys:?}");

        // other losses give another picture
        std::fs::write(&m, metrics(&[2.0, 1.9, 1.8, 1.0], &[(2, 1.7), (4, 1.4)])).unwrap();
        write_loss_curve(dir.path()).unwrap();
        let svg2 = std::fs::read_to_string(dir.path().join("loss.svg")).unwrap();
        assert_ne!(polyline(&svg), polyline(&svg2));
        // and the same losses the same bytes
        write_loss_curve(dir.path()).unwrap();
        assert_eq!(
            svg2,
            std::fs::read_to_string(dir.path().join("loss.svg")).unwrap()
        );
    }
}
