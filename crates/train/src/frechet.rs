//! The Fréchet distance between two Gaussians fitted to feature sets (FID's formula):
//! `|μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^½`, in f64, with the matrix square root taken
//! through symmetric eigendecompositions (cyclic Jacobi), so it needs no LAPACK.

/// Mean and covariance (divided by n − 1) of `n` row vectors of width `d`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    /// Width.
    pub d: usize,
    /// Mean, `d` values.
    pub mean: Vec<f64>,
    /// Covariance, `d × d` row-major.
    pub cov: Vec<f64>,
}

impl Gaussian {
    /// Fits `rows` (`n × d`, row-major); `n` must be at least 2.
    pub fn fit(rows: &[f32], d: usize) -> Gaussian {
        let n = rows.len() / d.max(1);
        assert!(n >= 2, "a covariance needs at least two samples");
        let mut mean = vec![0.0; d];
        for row in rows.chunks_exact(d) {
            for (m, x) in mean.iter_mut().zip(row) {
                *m += *x as f64 / n as f64;
            }
        }
        let mut cov = vec![0.0; d * d];
        for row in rows.chunks_exact(d) {
            let centred: Vec<f64> = row.iter().zip(&mean).map(|(x, m)| *x as f64 - m).collect();
            for i in 0..d {
                for j in i..d {
                    cov[i * d + j] += centred[i] * centred[j];
                }
            }
        }
        for i in 0..d {
            for j in i..d {
                let c = cov[i * d + j] / (n - 1) as f64;
                cov[i * d + j] = c;
                cov[j * d + i] = c;
            }
        }
        Gaussian { d, mean, cov }
    }
}

/// The Fréchet distance between two fitted Gaussians of the same width.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> f64 {
    assert_eq!(a.d, b.d, "feature widths differ");
    let d = a.d;
    let mean_term: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y).powi(2))
        .sum();
    let trace = |m: &[f64]| (0..d).map(|i| m[i * d + i]).sum::<f64>();
    // tr (Σa Σb)^½ = tr (Σa^½ Σb Σa^½)^½, and the inner matrix is symmetric PSD.
    let root_a = psd_sqrt(&a.cov, d);
    let inner = matmul(&matmul(&root_a, &b.cov, d), &root_a, d);
    let (values, _) = symmetric_eigen(&symmetrize(&inner, d), d);
    let cross: f64 = values.iter().map(|v| v.max(0.0).sqrt()).sum();
    (mean_term + trace(&a.cov) + trace(&b.cov) - 2.0 * cross).max(0.0)
}

/// Eigenvalues and eigenvectors (the columns of the `n × n` row-major result) of a symmetric
/// matrix, by cyclic Jacobi rotations until the off-diagonal mass is negligible.
pub fn symmetric_eigen(matrix: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = matrix.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..64 {
        let off: f64 = (0..n)
            .flat_map(|p| (0..n).filter(move |q| *q != p).map(move |q| (p, q)))
            .map(|(p, q)| a[p * n + q].powi(2))
            .sum();
        if off <= 1e-24 * total || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (kp, kq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * kp - s * kq;
                    a[k * n + q] = s * kp + c * kq;
                }
                for k in 0..n {
                    let (pk, qk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * pk - s * qk;
                    a[q * n + k] = s * pk + c * qk;
                }
                for k in 0..n {
                    let (kp, kq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * kp - s * kq;
                    v[k * n + q] = s * kp + c * kq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// The symmetric square root of a symmetric positive semi-definite matrix (negative
/// eigenvalues from rounding are taken as zero).
pub fn psd_sqrt(matrix: &[f64], n: usize) -> Vec<f64> {
    let (values, vectors) = symmetric_eigen(matrix, n);
    let mut out = vec![0.0; n * n];
    for (k, value) in values.iter().enumerate() {
        let root = value.max(0.0).sqrt();
        for i in 0..n {
            let vik = vectors[i * n + k] * root;
            for j in 0..n {
                out[i * n + j] += vik * vectors[j * n + k];
            }
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            for j in 0..n {
                out[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    out
}

fn symmetrize(m: &[f64], n: usize) -> Vec<f64> {
    let mut out = m.to_vec();
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = 0.5 * (m[i * n + j] + m[j * n + i]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_symmetric(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n {
                let x: f64 = rng.random_range(-1.0..1.0);
                m[i * n + j] = x;
                m[j * n + i] = x;
            }
        }
        m
    }

    #[test]
    fn eigendecomposition_reconstructs_the_matrix() {
        let n = 12;
        let m = random_symmetric(n, 3);
        let (values, v) = symmetric_eigen(&m, n);
        for i in 0..n {
            for j in 0..n {
                let rebuilt: f64 = (0..n)
                    .map(|k| v[i * n + k] * values[k] * v[j * n + k])
                    .sum();
                assert!((rebuilt - m[i * n + j]).abs() < 1e-10, "({i},{j})");
                let dot: f64 = (0..n).map(|k| v[k * n + i] * v[k * n + j]).sum();
                assert!((dot - f64::from(u8::from(i == j))).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn square_root_squares_back() {
        let n = 10;
        let a = random_symmetric(n, 5);
        let psd = matmul(&a, &a, n);
        let root = psd_sqrt(&psd, n);
        let back = matmul(&root, &root, n);
        for (x, y) in back.iter().zip(&psd) {
            assert!((x - y).abs() < 1e-9);
        }
    }

    #[test]
    fn matches_the_closed_form_for_diagonal_covariances() {
        // Independent coordinates: FD = Σ (μa − μb)² + (σa − σb)².
        let d = 3;
        let a = Gaussian {
            d,
            mean: vec![0.0, 1.0, 2.0],
            cov: vec![4.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 9.0],
        };
        let b = Gaussian {
            d,
            mean: vec![1.0, 1.0, 0.0],
            cov: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.25],
        };
        let expected = (1.0 + 0.0 + 4.0) + (1.0 + 0.0 + 6.25);
        assert!((frechet_distance(&a, &b) - expected).abs() < 1e-12);
        assert!(frechet_distance(&a, &a).abs() < 1e-9);
    }

    #[test]
    fn is_invariant_under_rotation() {
        // Rotating both Gaussians by one orthogonal R keeps the closed-form distance of the
        // diagonal case while making every covariance dense.
        let d = 3;
        let (_, r) = symmetric_eigen(&random_symmetric(d, 11), d);
        let rotate = |mean: [f64; 3], var: [f64; 3]| {
            let mut cov = vec![0.0; d * d];
            for i in 0..d {
                for j in 0..d {
                    cov[i * d + j] = (0..d).map(|k| r[i * d + k] * var[k] * r[j * d + k]).sum();
                }
            }
            let mean = (0..d)
                .map(|i| (0..d).map(|k| r[i * d + k] * mean[k]).sum())
                .collect();
            Gaussian { d, mean, cov }
        };
        let a = rotate([0.0, 1.0, 2.0], [4.0, 1.0, 9.0]);
        let b = rotate([1.0, 1.0, 0.0], [1.0, 1.0, 0.25]);
        assert!(a.cov[1].abs() > 1e-3, "the rotation mixes coordinates");
        assert!((frechet_distance(&a, &b) - 12.25).abs() < 1e-9);
    }

    #[test]
    fn fitting_recovers_mean_and_unbiased_covariance() {
        let rows = [1.0f32, 2.0, 3.0, 6.0, 5.0, 10.0];
        let g = Gaussian::fit(&rows, 2);
        assert_eq!(g.mean, vec![3.0, 6.0]);
        // x: 1,3,5 (var 4); y: 2,6,10 (var 16); cov 8.
        assert_eq!(g.cov, vec![4.0, 8.0, 8.0, 16.0]);
    }
}
