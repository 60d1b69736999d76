//! Kubernetes resource quantities (`resource.Quantity` of k8s.io/apimachinery), as kubelet
//! and containerd read the `kubernetes.io/ingress-bandwidth` and `-egress-bandwidth` pod
//! annotations.
//!
//! A quantity is `<signedNumber><suffix>`: an optional sign, digits with an optional decimal
//! point, then a decimal SI suffix (`n u m "" k M G T P E`), a binary one
//! (`Ki Mi Gi Ti Pi Ei`) or a decimal exponent (`e3`, `E-2`, `e+6`). As in apimachinery, the
//! digits may be absent ("." and "k" are zero) and nothing else is accepted: no spaces, no
//! `K`, no `ki`.
//!
//! Why our own parser: on crates.io, `k8s_quantity_parser` 0.1 takes integers only (no
//! "1.5M", no exponent) and panics on overflow; `kube_quantity` 0.9 goes through `f64` and
//! has no exponent form (and pulls k8s-openapi, nom, rust_decimal); `k8s-openapi`'s
//! `Quantity` is just the string. This one is exact: the value is kept as decimal digits
//! with a power of ten and a power of two, so "0.1Ki" is 102.4 and rounds up to 103 as
//! apimachinery's `Value()` does, never a float away from it.

use std::fmt;
use std::str::FromStr;

/// A parsed quantity: ± digits × 10^exp10 × 2^exp2, exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    /// Decimal digits (values 0–9), most significant first, no leading zero; empty for zero.
    digits: Vec<u8>,
    /// Power of ten: the suffix's exponent less the number of fraction digits.
    exp10: i128,
    /// Power of two of a binary suffix (`Ki` is 10, `Ei` 60).
    exp2: u32,
}

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuantityError {
    /// The empty string.
    Empty,
    /// What follows the number is no suffix.
    Suffix(String),
    /// Longer than [`MAX_LEN`] bytes (the length).
    TooLong(usize),
}

/// The longest quantity read, in bytes. apimachinery itself takes any length (it falls back to
/// arbitrary precision), but the annotation is bounded only by the 16 MiB CRI message and the
/// exact arithmetic here costs time per digit, so a limit keeps a hostile annotation cheap.
/// 64 is far more than any bandwidth needs: the largest one accepted, 1 Pbit/s, is 16 digits,
/// an int64 (apimachinery's fast path, and its `Value()`) 19; the rest is room for fraction
/// digits, leading zeros and an exponent. A longer value is refused, never truncated.
pub const MAX_LEN: usize = 64;

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantityError::Empty => write!(f, "empty"),
            QuantityError::TooLong(n) => write!(f, "{n} bytes long (at most {MAX_LEN})"),
            QuantityError::Suffix(s) => write!(
                f,
                "unknown suffix {s:?} (want n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei \
                 or an exponent such as e3)"
            ),
        }
    }
}

impl std::error::Error for QuantityError {}

/// (power of ten, power of two) of a suffix, as apimachinery's `suffixHandler.interpret`.
fn suffix(s: &str) -> Option<(i128, u32)> {
    Some(match s {
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "" => (0, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        // `e`/`E` and a base-10 integer that Go's ParseInt(.., 10, 64) takes (an optional
        // sign, then digits). apimachinery then truncates it to int32 (so "1e4294967296" is
        // 1 there); the exponent is kept whole here: such a value saturates.
        _ => {
            let exp = s.strip_prefix(['e', 'E']).filter(|e| !e.is_empty())?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (i128::from(exp.parse::<i64>().ok()?), 0)
        }
    })
}

impl FromStr for Quantity {
    type Err = QuantityError;

    /// Parses as apimachinery's `ParseQuantity`.
    fn from_str(s: &str) -> Result<Self, QuantityError> {
        if s.is_empty() {
            return Err(QuantityError::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(QuantityError::TooLong(s.len()));
        }
        let (negative, rest) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int, rest) = rest.split_at(int_len);
        let (frac, rest) = match rest.strip_prefix('.') {
            Some(r) => r.split_at(r.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", rest),
        };
        let (exp10, exp2) = suffix(rest).ok_or_else(|| QuantityError::Suffix(rest.into()))?;
        let digits: Vec<u8> = int
            .bytes()
            .chain(frac.bytes())
            .skip_while(|&b| b == b'0')
            .map(|b| b - b'0')
            .collect();
        Ok(Quantity {
            negative: negative && !digits.is_empty(),
            exp10: exp10 - frac.len() as i128,
            exp2,
            digits,
        })
    }
}

impl Quantity {
    /// Whether it is below zero ("-0" is not).
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// The magnitude rounded up to a whole number ("100m" is 1), capped at `i64::MAX` as
    /// apimachinery caps every quantity: `Quantity.Value()` of a quantity that is not
    /// negative.
    pub fn ceil_magnitude(&self) -> u64 {
        const CAP: u64 = i64::MAX as u64;
        // digits × 2^exp2, still in decimal digits (a binary suffix with a fraction, "1.5Ki",
        // stays exact): doubling a decimal digit string.
        let mut d = self.digits.clone();
        for _ in 0..self.exp2 {
            let mut carry = 0;
            for x in d.iter_mut().rev() {
                let v = *x * 2 + carry;
                *x = v % 10;
                carry = v / 10;
            }
            if carry > 0 {
                d.insert(0, carry);
            }
        }
        if d.is_empty() {
            return 0;
        }
        // Now the value is d × 10^exp10: the first `whole` digits are the integer part.
        let whole = d.len() as i128 + self.exp10;
        if whole <= 0 {
            return 1; // 0 < value < 1
        }
        if whole > 19 {
            return CAP; // ≥ 10^19 > i64::MAX
        }
        let whole = whole as usize;
        let mut v: u128 = 0;
        for i in 0..whole {
            v = v * 10 + u128::from(d.get(i).copied().unwrap_or(0));
        }
        if d.iter().skip(whole).any(|&x| x != 0) {
            v += 1;
        }
        v.min(u128::from(CAP)) as u64
    }
}

/// The smallest bandwidth containerd and kubelet accept: 1 kbit/s.
const MIN_BANDWIDTH: u64 = 1_000;
/// The largest: 1 Pbit/s.
const MAX_BANDWIDTH: u64 = 1_000_000_000_000_000;

/// A bandwidth annotation in bits per second, as containerd reads it (`toCNIBandWidth`, with
/// Kubernetes' `ExtractPodBandwidthResources`): `ParseQuantity`, then `Value()` (rounded up),
/// which must lie within 1 kbit/s and 1 Pbit/s. The error says why, for the caller to name
/// the annotation and its value.
pub fn bandwidth(s: &str) -> Result<u64, String> {
    let q: Quantity = s
        .parse()
        .map_err(|e| format!("not a Kubernetes quantity: {e}"))?;
    if q.is_negative() {
        return Err("negative".into());
    }
    match q.ceil_magnitude() {
        v if v < MIN_BANDWIDTH => Err("unreasonably small (< 1kbit)".into()),
        v if v > MAX_BANDWIDTH => Err("unreasonably large (> 1Pbit)".into()),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn value(s: &str) -> u64 {
        s.parse::<Quantity>()
            .unwrap_or_else(|e| panic!("{s:?}: {e}"))
            .ceil_magnitude()
    }

    #[test]
    fn every_suffix_form() {
        for (s, v) in [
            ("0", 0),
            ("500", 500),
            ("+500", 500),
            ("1k", 1_000),
            ("10M", 10_000_000),
            ("1.5M", 1_500_000),
            ("1G", 1_000_000_000),
            ("1T", 1_000_000_000_000),
            ("2P", 2_000_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("1Ki", 1024),
            ("1Mi", 1 << 20),
            ("1.5Mi", 3 << 19),
            ("1Gi", 1 << 30),
            ("1Ti", 1 << 40),
            ("1Pi", 1 << 50),
            ("1Ei", 1 << 60),
            ("0.1Ki", 103), // 102.4, rounded up
            ("1e3", 1_000),
            ("1E6", 1_000_000),
            ("1.5e3", 1_500),
            ("15e-1", 2),
            ("1e+3", 1_000),
            ("100m", 1), // 0.1, rounded up as Value() rounds
            ("1000m", 1),
            ("1001m", 2),
            ("1500000000n", 2),
            ("1u", 1),
            ("0.000", 0),
            ("007k", 7_000),
            (".5k", 500),
            ("1.k", 1_000),
            // apimachinery takes these as zero, so do we.
            (".", 0),
            ("k", 0),
            ("-0", 0),
        ] {
            assert_eq!(value(s), v, "{s}");
        }
        assert!("-1k".parse::<Quantity>().unwrap().is_negative());
        assert!(!"-0".parse::<Quantity>().unwrap().is_negative());
    }

    #[test]
    fn saturates_as_apimachinery_caps() {
        assert_eq!(value("10E"), i64::MAX as u64);
        assert_eq!(value("8Ei"), i64::MAX as u64);
        assert_eq!(value("1e100"), i64::MAX as u64);
        assert_eq!(value("9223372036854775807"), i64::MAX as u64);
        assert_eq!(value("9223372036854775806.1"), i64::MAX as u64);
        assert_eq!(value("1e-100"), 1);
        assert_eq!(value("1e9223372036854775807"), i64::MAX as u64);
        assert_eq!(value(&format!("0.{}1", "0".repeat(MAX_LEN - 3))), 1);
    }

    #[test]
    fn not_quantities() {
        for s in [
            "", " 1", "1 ", "1K", "1ki", "1KiB", "1Mb", "fast", "1e", "1e3.5", "1.2.3", "1Mi3",
            "1ee3", "1e+-3", "1_000", "0x10", "--1", "1,5M", "∞",
        ] {
            assert!(s.parse::<Quantity>().is_err(), "{s:?} parsed");
        }
        assert_eq!("".parse::<Quantity>().unwrap_err().to_string(), "empty");
        // Bounded: a 16 MiB annotation is refused before any arithmetic, and at once.
        let long = format!("1{}", "0".repeat(MAX_LEN));
        assert_eq!(
            long.parse::<Quantity>().unwrap_err(),
            QuantityError::TooLong(MAX_LEN + 1)
        );
        let huge = "9".repeat(16 << 20) + "Ei";
        let start = std::time::Instant::now();
        assert!(huge.parse::<Quantity>().is_err());
        assert!(start.elapsed() < std::time::Duration::from_millis(100));
        assert!("1Kb"
            .parse::<Quantity>()
            .unwrap_err()
            .to_string()
            .contains("\"Kb\""));
    }

    #[test]
    fn bandwidth_as_containerd_takes_it() {
        assert_eq!(bandwidth("1.5M"), Ok(1_500_000));
        assert_eq!(bandwidth("1T"), Ok(1_000_000_000_000));
        assert_eq!(bandwidth("1k"), Ok(1_000));
        assert_eq!(bandwidth("1P"), Ok(MAX_BANDWIDTH));
        assert_eq!(bandwidth("10Mi"), Ok(10 << 20));
        assert!(bandwidth("100m").unwrap_err().contains("small"));
        assert!(bandwidth("999").unwrap_err().contains("small"));
        assert!(bandwidth("1.1P").unwrap_err().contains("large"));
        assert!(bandwidth("1Pi").unwrap_err().contains("large"));
        assert_eq!(bandwidth("-10M").unwrap_err(), "negative");
        assert!(bandwidth("10 M")
            .unwrap_err()
            .starts_with("not a Kubernetes quantity"));
    }

    /// Random quantities against a reference computed another way: the whole rational value
    /// num / den in u128, rounded up by integer division.
    #[test]
    fn random_quantities_match_a_rational_reference() {
        const SUFFIXES: [(&str, u128, u128); 19] = [
            ("n", 1, 1_000_000_000),
            ("u", 1, 1_000_000),
            ("m", 1, 1_000),
            ("", 1, 1),
            ("k", 1_000, 1),
            ("M", 1_000_000, 1),
            ("G", 1_000_000_000, 1),
            ("T", 1_000_000_000_000, 1),
            ("Ki", 1 << 10, 1),
            ("Mi", 1 << 20, 1),
            ("Gi", 1 << 30, 1),
            ("Ti", 1 << 40, 1),
            ("e0", 1, 1),
            ("e2", 100, 1),
            ("E5", 100_000, 1),
            ("e-1", 1, 10),
            ("e-4", 1, 10_000),
            ("E+7", 10_000_000, 1),
            ("e-12", 1, 1_000_000_000_000),
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6e65_7472_6561_6479);
        for _ in 0..20_000 {
            let int: u64 = rng.random_range(0..10_000_000);
            let frac_len: u32 = rng.random_range(0..7);
            let frac: u64 = rng.random_range(0..10u64.pow(frac_len));
            let (suf, mul, div) = SUFFIXES[rng.random_range(0..SUFFIXES.len())];
            let zeros = if rng.random_bool(0.2) { "00" } else { "" };
            let s = if frac_len == 0 {
                format!("{zeros}{int}{suf}")
            } else {
                format!("{zeros}{int}.{frac:0w$}{suf}", w = frac_len as usize)
            };
            let scale = 10u128.pow(frac_len);
            let num = (u128::from(int) * scale + u128::from(frac)) * mul;
            let den = scale * div;
            let want = num.div_ceil(den).min(i64::MAX as u128) as u64;
            assert_eq!(value(&s), want, "{s}");
        }
    }
}
