//! Seed statistics shared by the studies (ablate, recipe, search, precision): the mean, the sample
//! standard deviation and the standard deviation pooled over configs.

/// The arithmetic mean; `None` for no values.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The mean and the sample standard deviation (n − 1 in the denominator; `None` for one value);
/// `None` for no values.
pub fn mean_sd(values: &[f64]) -> Option<(f64, Option<f64>)> {
    let mean = mean(values)?;
    let sd = (values.len() > 1).then(|| {
        let squares: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
        (squares / (values.len() - 1) as f64).sqrt()
    });
    Some((mean, sd))
}

/// The standard deviation pooled over groups given as (sample sd, number of values),
/// √(Σ (n_i − 1) s_i² / Σ (n_i − 1)), with its degrees of freedom Σ (n_i − 1). Groups of fewer
/// than two values carry no spread and are skipped; `None` when none remains.
pub fn pooled_sd(groups: impl IntoIterator<Item = (f64, usize)>) -> Option<(f64, usize)> {
    let (mut squares, mut dof) = (0.0, 0usize);
    for (sd, n) in groups.into_iter().filter(|&(_, n)| n > 1) {
        squares += (n - 1) as f64 * sd * sd;
        dof += n - 1;
    }
    (dof > 0).then(|| ((squares / dof as f64).sqrt(), dof))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_sd_match_a_hand_computation() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, squared deviations sum to 32, sample variance 32 / 7.
        let (m, sd) = mean_sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(m, 5.0);
        assert!((sd.unwrap() - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_sd(&[3.0]), Some((3.0, None)));
        assert_eq!(mean_sd(&[]), None);
        assert_eq!(mean(&[]), None);
    }

    #[test]
    fn pooling_weights_each_group_by_its_degrees_of_freedom() {
        // Group a: 1, 3 (deviations ±1, squares 2, 1 dof); group b: 0, 3, 6 (squares 18, 2 dof).
        let a = [1.0, 3.0];
        let b = [0.0, 3.0, 6.0];
        let sd = |v: &[f64]| mean_sd(v).unwrap().1.unwrap();
        let (pooled, dof) = pooled_sd([(sd(&a), 2), (sd(&b), 3), (7.0, 1)]).unwrap();
        assert_eq!(dof, 3);
        assert!((pooled - (20.0f64 / 3.0).sqrt()).abs() < 1e-12);
        // The mean of the two variances (1 and 9) would give √5: unequal seed counts differ.
        assert!((pooled - 5.0f64.sqrt()).abs() > 0.1);
        assert_eq!(pooled_sd([(7.0, 1)]), None);
    }
}
