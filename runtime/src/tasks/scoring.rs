//! Scoring a classifier against known labels, as a pathologist reads it: accuracy,
//! sensitivity (true-positive rate), specificity (true-negative rate) and the area under
//! the ROC curve of the positive class's probability; and reading the labels file
//! (`file,label` CSV, the label a class index or a class name).

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// One scored prediction: the positive class's probability, whether the model called it
/// positive, and whether it is.
#[derive(Debug, Clone, Copy)]
pub struct Scored {
    pub probability: f32,
    pub predicted_positive: bool,
    pub positive: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Scores {
    pub n: usize,
    pub positives: usize,
    pub accuracy: f64,
    /// NaN when there is no positive.
    pub sensitivity: f64,
    /// NaN when there is no negative.
    pub specificity: f64,
    /// The probability that a random positive scores above a random negative (ties
    /// count half): the Mann-Whitney form of the ROC area. NaN without both classes.
    pub auc: f64,
}

pub fn score(items: &[Scored]) -> Scores {
    let n = items.len();
    let count = |f: &dyn Fn(&Scored) -> bool| items.iter().filter(|s| f(s)).count();
    let positives = count(&|s| s.positive);
    let negatives = n - positives;
    let tp = count(&|s| s.positive && s.predicted_positive);
    let tn = count(&|s| !s.positive && !s.predicted_positive);
    let ratio = |a: usize, b: usize| if b == 0 { f64::NAN } else { a as f64 / b as f64 };
    // Ranks over the sorted probabilities, ties sharing their mean rank.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| items[a].probability.total_cmp(&items[b].probability));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && items[order[j + 1]].probability == items[order[i]].probability {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += mean_rank * order[i..=j].iter().filter(|&&k| items[k].positive).count() as f64;
        i = j + 1;
    }
    let auc = if positives == 0 || negatives == 0 {
        f64::NAN
    } else {
        (rank_sum_pos - (positives * (positives + 1)) as f64 / 2.0) / (positives as f64 * negatives as f64)
    };
    Scores { n, positives, accuracy: ratio(tp + tn, n), sensitivity: ratio(tp, positives), specificity: ratio(tn, negatives), auc }
}

/// A labels file: `file,label` (a header row naming them, or none), the label a class
/// index or one of `class_names`. Keys are the file names as written.
pub fn read_labels(path: &Path, class_names: &[String]) -> Result<HashMap<String, usize>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |line: usize, why: String| Error::Invalid(format!("{}:{line}: {why}", path.display()));
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut labels = HashMap::new();
    let (mut file_col, mut label_col) = (0, 1);
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| bad(i + 1, e.to_string()))?;
        if i == 0 {
            let names: Vec<String> = rec.iter().map(|c| c.trim().to_ascii_lowercase()).collect();
            if let (Some(f), Some(l)) = (names.iter().position(|c| c == "file"), names.iter().position(|c| c == "label")) {
                (file_col, label_col) = (f, l);
                continue;
            }
        }
        let (Some(file), Some(label)) = (rec.get(file_col), rec.get(label_col)) else {
            return Err(bad(i + 1, "expected file,label".into()));
        };
        let label = label.trim();
        let class = match label.parse::<usize>() {
            Ok(k) if k < class_names.len() => k,
            Ok(k) => return Err(bad(i + 1, format!("label {k}: the model has {} classes", class_names.len()))),
            Err(_) => class_names
                .iter()
                .position(|c| c.eq_ignore_ascii_case(label))
                .ok_or_else(|| bad(i + 1, format!("label {label:?} is neither a class index nor one of {}", class_names.join(", "))))?,
        };
        labels.insert(file.trim().to_string(), class);
    }
    if labels.is_empty() {
        return Err(Error::Invalid(format!("{}: no labels in it (expected file,label rows)", path.display())));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(p: f32, pos: bool) -> Scored {
        Scored { probability: p, predicted_positive: p >= 0.5, positive: pos }
    }

    #[test]
    fn scores_match_hand_counts() {
        // Positives 0.9, 0.6, 0.4; negatives 0.7, 0.2. Pairs ranked right: (0.9>0.7),
        // (0.9>0.2), (0.6>0.2), (0.4>0.2) = 4 of 6.
        let r = score(&[s(0.9, true), s(0.6, true), s(0.4, true), s(0.7, false), s(0.2, false)]);
        assert_eq!((r.n, r.positives), (5, 3));
        assert!((r.auc - 4.0 / 6.0).abs() < 1e-12, "{r:?}");
        assert!((r.accuracy - 3.0 / 5.0).abs() < 1e-12);
        assert!((r.sensitivity - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.specificity - 0.5).abs() < 1e-12);
        // A tie between a positive and a negative counts half.
        assert!((score(&[s(0.5, true), s(0.5, false)]).auc - 0.5).abs() < 1e-12);
        assert!(score(&[s(0.5, true)]).auc.is_nan());
    }

    #[test]
    fn labels_are_indices_or_class_names() {
        let dir = std::env::temp_dir().join(format!("edgemed-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let names = vec!["normal".to_string(), "metastatic".to_string()];
        let p = dir.join("labels.csv");
        std::fs::write(&p, "file,label\na.png,1\nb.png,Normal\n").unwrap();
        let l = read_labels(&p, &names).unwrap();
        assert_eq!((l["a.png"], l["b.png"]), (1, 0));
        std::fs::write(&p, "a.png,2\n").unwrap();
        assert!(read_labels(&p, &names).unwrap_err().to_string().contains("2 classes"));
        std::fs::write(&p, "a.png,tumour\n").unwrap();
        assert!(read_labels(&p, &names).unwrap_err().to_string().contains("labels.csv:1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
