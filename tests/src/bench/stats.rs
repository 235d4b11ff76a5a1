//! Summaries of repeated measurements: median and spread.

use serde_json::{json, Value};

/// Median, extremes and spread of a set of samples (one unit, e.g. ms).
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub samples: Vec<f64>,
}

impl Summary {
    pub fn new(samples: Vec<f64>) -> Self {
        Self { samples }
    }

    pub fn n(&self) -> usize {
        self.samples.len()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        s
    }

    pub fn median(&self) -> f64 {
        let s = self.sorted();
        match s.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => s[n / 2],
            n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// Sample standard deviation (0 for a single sample).
    pub fn stddev(&self) -> f64 {
        let n = self.samples.len();
        if n < 2 {
            return 0.0;
        }
        let mean = self.samples.iter().sum::<f64>() / n as f64;
        let var = self.samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        var.sqrt()
    }

    /// `median (min–max, n=N)` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        if self.samples.is_empty() {
            return "n/a".into();
        }
        format!(
            "{:.d$} ({:.d$}–{:.d$}, n={})",
            self.median(),
            self.min(),
            self.max(),
            self.n(),
            d = digits
        )
    }

    pub fn json(&self) -> Value {
        if self.samples.is_empty() {
            return Value::Null;
        }
        json!({
            "median": self.median(),
            "min": self.min(),
            "max": self.max(),
            "stddev": self.stddev(),
            "n": self.n(),
            "samples": self.samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn median_and_spread() {
        let s = Summary::new(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!(s.median(), 2.5);
        assert_eq!(s.min(), 1.0);
        assert_eq!(s.max(), 10.0);
        assert_eq!(Summary::new(vec![5.0]).stddev(), 0.0);
        assert!(Summary::default().median().is_nan());
    }
}
