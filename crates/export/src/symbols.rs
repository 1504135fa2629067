//! Symbolic dimensions: how a graph stays valid for any batch, latent size and token count.
//!
//! The forward is walked with concrete sizes in which each dynamic [`Symbol`] is a distinct prime
//! marker (the latent height and width times `2^(levels−1)`, so every level halves exactly), and
//! every dimension the walk produces is decoded back into a [`Monomial`]
//! `c · batch^a · height^b · width^c · tokens^d`, with height and width counted in units of the
//! smallest level. The forward only multiplies and divides sizes, so each dimension is such a
//! monomial; the markers are primes above every static size of a UNet, so the decoding is unique.

use std::fmt;

/// A size that a dynamic graph leaves open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Symbol {
    /// The batch.
    Batch,
    /// The latent height, in units of the smallest level.
    Height,
    /// The latent width, in units of the smallest level.
    Width,
    /// Text tokens.
    Tokens,
}

/// Every symbol, in the order of [`Monomial::powers`].
pub const SYMBOLS: [Symbol; 4] = [Symbol::Batch, Symbol::Height, Symbol::Width, Symbol::Tokens];

/// The marker of each symbol in the walk: primes above 2¹³, far above any static UNet size that
/// appears beside them, and small enough that the largest product the forward forms
/// (channels per group × height × width) stays far below 2⁶³.
const MARKERS: [usize; 4] = [8191, 8209, 8219, 8221];

impl Symbol {
    fn index(self) -> usize {
        self as usize
    }

    /// The name of the dimension in graph signatures.
    pub fn name(self) -> &'static str {
        match self {
            Symbol::Batch => "batch",
            Symbol::Height => "height",
            Symbol::Width => "width",
            Symbol::Tokens => "tokens",
        }
    }
}

/// `coefficient · ∏ symbolᵖ`: one dimension of a walked tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Monomial {
    /// The static factor.
    pub coefficient: usize,
    /// The power of each symbol, in [`SYMBOLS`] order.
    pub powers: [u32; 4],
}

impl Monomial {
    /// Whether the dimension is the same for every input size.
    pub fn is_static(&self) -> bool {
        self.powers.iter().all(|&p| p == 0)
    }

    /// The symbols with a non-zero power, each with its power.
    pub fn factors(&self) -> impl Iterator<Item = (Symbol, u32)> + '_ {
        SYMBOLS
            .iter()
            .zip(self.powers)
            .filter(|(_, p)| *p > 0)
            .map(|(&s, p)| (s, p))
    }
}

/// Which sizes are dynamic, and the walk's value of each.
#[derive(Debug, Clone, Copy)]
pub struct Symbols {
    /// Latent pixels per height or width unit: `2^(levels−1)`.
    unit: usize,
    dynamic: [bool; 4],
}

impl Symbols {
    /// A graph whose `dynamic` symbols stay open; `unit` is `2^(levels−1)` for a UNet (1 when
    /// height and width are not dynamic).
    pub fn new(dynamic: &[Symbol], unit: usize) -> Symbols {
        let mut flags = [false; 4];
        for s in dynamic {
            flags[s.index()] = true;
        }
        Symbols {
            unit,
            dynamic: flags,
        }
    }

    /// The walk's size for a dynamic `symbol` (height and width in latent pixels).
    pub fn marker(&self, symbol: Symbol) -> usize {
        let prime = MARKERS[symbol.index()];
        match symbol {
            Symbol::Height | Symbol::Width => prime * self.unit,
            Symbol::Batch | Symbol::Tokens => prime,
        }
    }

    /// The monomial of a dimension of the walk.
    pub fn decode(&self, mut dim: usize) -> Monomial {
        let mut powers = [0; 4];
        for (i, &prime) in MARKERS.iter().enumerate() {
            if !self.dynamic[i] {
                continue;
            }
            while dim != 0 && dim.is_multiple_of(prime) {
                dim /= prime;
                powers[i] += 1;
            }
        }
        Monomial {
            coefficient: dim,
            powers,
        }
    }

    /// A dimension for signatures and messages: a number, a symbol's name (`height` and `width`
    /// in latent pixels), or an expression such as `40*height*width` or `height/2`.
    pub fn show(&self, dim: usize) -> String {
        let m = self.decode(dim);
        if m.is_static() {
            return dim.to_string();
        }
        // Height and width are shown in latent pixels, `unit` times the walk's symbol.
        let spatial = m.powers[Symbol::Height.index()] + m.powers[Symbol::Width.index()];
        let mut numerator = m.coefficient;
        let mut denominator = self.unit.pow(spatial);
        let common = gcd(numerator, denominator);
        numerator /= common;
        denominator /= common;
        let mut parts: Vec<String> = Vec::new();
        if numerator != 1 {
            parts.push(numerator.to_string());
        }
        for (s, p) in m.factors() {
            parts.extend(std::iter::repeat_n(s.name().to_string(), p as usize));
        }
        let product = parts.join("*");
        if denominator == 1 {
            product
        } else {
            format!("{product}/{denominator}")
        }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_decode_into_monomials() {
        let s = Symbols::new(&SYMBOLS, 8);
        let (b, h, w, t) = (
            s.marker(Symbol::Batch),
            s.marker(Symbol::Height),
            s.marker(Symbol::Width),
            s.marker(Symbol::Tokens),
        );
        // Tokens of a level two steps down, 40 channels per group at full size, the batch.
        let tokens = (h / 4) * (w / 4);
        assert_eq!(s.decode(tokens).coefficient, 4);
        assert_eq!(s.decode(tokens).powers, [0, 1, 1, 0]);
        assert_eq!(s.decode(40 * h * w).coefficient, 40 * 64);
        assert_eq!(s.decode(b).powers, [1, 0, 0, 0]);
        assert_eq!(s.decode(t * 3).powers, [0, 0, 0, 1]);
        assert!(s.decode(1280).is_static());
        assert_eq!(s.show(h), "height");
        assert_eq!(s.show(40 * h * w), "40*height*width");
        assert_eq!(s.show(h / 2), "height/2");
        assert_eq!(s.show(tokens), "height*width/16");
        assert_eq!(s.show(b), "batch");
    }

    #[test]
    fn static_symbols_stay_numbers() {
        let s = Symbols::new(&[Symbol::Batch], 1);
        assert!(s.decode(MARKERS[1] * 8).is_static());
        assert_eq!(s.decode(2 * MARKERS[0]).powers, [1, 0, 0, 0]);
    }
}
