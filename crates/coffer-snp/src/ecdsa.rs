//! ECDSA P-384 verification with fixed-base comb tables, for keys that sign many reports.
//!
//! Why not OpenSSL here: Debian 12's OpenSSL 3.0 has no P-384-specific code (it arrived in 3.2), so
//! a report signature check runs on generic bignum arithmetic with ~384 point doublings (0.63 ms,
//! the largest cost of an attestation). A VCEK signs every report of its chip, and G never changes,
//! so both scalar multiplications of the check can use precomputed multiples instead: with one
//! table of `j * 256^i * P` (i < 48, 0 < j < 256) per point, `u1*G + u2*Q` is at most 96 mixed
//! additions and no doubling. The field and group arithmetic is RustCrypto's `p384`; only the
//! schedule is ours. Verification handles public data only, so the table lookups need not be
//! constant-time.

use std::sync::OnceLock;

use openssl::bn::{BigNum, BigNumContext};
use p384::elliptic_curve::bigint::Encoding as _;
use p384::elliptic_curve::group::prime::PrimeCurveAffine as _;
use p384::elliptic_curve::ops::Reduce;
use p384::elliptic_curve::point::AffineCoordinates as _;
use p384::elliptic_curve::sec1::FromEncodedPoint as _;
use p384::elliptic_curve::subtle::ConstantTimeEq as _;
use p384::elliptic_curve::Curve as _;
use p384::elliptic_curve::PrimeField as _;
use p384::{AffinePoint, EncodedPoint, FieldBytes, NistP384, ProjectivePoint, Scalar, U384};

/// Bytes of a P-384 scalar: also the number of 8-bit windows.
const WINDOWS: usize = 48;
/// Non-zero values of one 8-bit window.
const ENTRIES: usize = 255;

/// `table[i][j - 1] = j * 256^(47 - i) * P`, indexed like the scalar's big-endian bytes.
///
/// Entries stay projective: `p384` 0.13 has no batch inversion for its field, one inversion per
/// entry would cost ~100x the table, and with complete addition formulas a mixed (affine) addition
/// saves only one multiplication in twelve.
struct Comb {
    table: Vec<[ProjectivePoint; ENTRIES]>,
}

impl Comb {
    fn new(point: ProjectivePoint) -> Self {
        let mut table = Vec::with_capacity(WINDOWS);
        let mut base = point;
        for _ in 0..WINDOWS {
            let mut multiples = [ProjectivePoint::IDENTITY; ENTRIES];
            let mut acc = base;
            for m in multiples.iter_mut() {
                *m = acc;
                acc += base;
            }
            // acc = 256 * base: the next window's base.
            table.push(multiples);
            base = acc;
        }
        // Big-endian byte i of a scalar weighs 256^(47 - i).
        table.reverse();
        Comb { table }
    }

    /// Add `k * P` into `acc`.
    fn mul_add(&self, k: &Scalar, acc: &mut ProjectivePoint) {
        for (window, &byte) in self.table.iter().zip(k.to_repr().iter()) {
            if byte != 0 {
                *acc += &window[usize::from(byte) - 1];
            }
        }
    }
}

/// `1/s mod n` on OpenSSL's variable-time binary inversion (16 us; `p384`'s constant-time one
/// takes 50 us). `s` is part of a public signature, so its timing leaks nothing.
fn invert_vartime(s: &Scalar) -> Option<Scalar> {
    static ORDER: OnceLock<Option<BigNum>> = OnceLock::new();
    let order = ORDER
        .get_or_init(|| BigNum::from_slice(&NistP384::ORDER.to_be_bytes()).ok())
        .as_ref()?;
    let mut ctx = BigNumContext::new().ok()?;
    let mut inverse = BigNum::new().ok()?;
    let s = BigNum::from_slice(&s.to_repr()).ok()?;
    inverse.mod_inverse(&s, order, &mut ctx).ok()?;
    let bytes = inverse.to_vec_padded(48).ok()?;
    Scalar::from_repr(*FieldBytes::from_slice(&bytes)).into()
}

fn generator() -> &'static Comb {
    static G: OnceLock<Comb> = OnceLock::new();
    G.get_or_init(|| Comb::new(ProjectivePoint::GENERATOR))
}

/// A P-384 public key with its comb table (1.8 MB).
pub(crate) struct CombKey {
    q: Comb,
}

impl CombKey {
    /// From the SEC1 encoding of the point (as OpenSSL or a certificate gives it). `None` if it is
    /// not a point of the curve, or is the identity.
    pub(crate) fn from_sec1(bytes: &[u8]) -> Option<Self> {
        let encoded = EncodedPoint::from_bytes(bytes).ok()?;
        let point: Option<AffinePoint> = AffinePoint::from_encoded_point(&encoded).into();
        let point = point.filter(|p| !bool::from(p.is_identity()))?;
        Some(CombKey {
            q: Comb::new(point.to_curve()),
        })
    }

    /// Verify the signature `(r, s)` (big-endian) over the SHA-384 `digest` (SEC 1 v2, 4.1.4).
    pub(crate) fn verify_prehash(&self, digest: &[u8; 48], r: &[u8; 48], s: &[u8; 48]) -> bool {
        let scalar = |b: &[u8; 48]| -> Option<Scalar> {
            let v: Option<Scalar> = Scalar::from_repr(*FieldBytes::from_slice(b)).into();
            v.filter(|v| !bool::from(v.is_zero()))
        };
        // r and s in [1, n-1].
        let (Some(r), Some(s)) = (scalar(r), scalar(s)) else {
            return false;
        };
        // The digest is as long as the order: e = digest mod n.
        let e = <Scalar as Reduce<U384>>::reduce_bytes(FieldBytes::from_slice(digest));
        let Some(w) = invert_vartime(&s) else {
            return false;
        };
        let mut point = ProjectivePoint::IDENTITY;
        generator().mul_add(&(e * w), &mut point);
        self.q.mul_add(&(r * w), &mut point);
        let point = point.to_affine();
        if bool::from(point.is_identity()) {
            return false;
        }
        let x = <Scalar as Reduce<U384>>::reduce_bytes(&point.x());
        bool::from(x.ct_eq(&r))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use openssl::bn::{BigNum, BigNumContext, BigNumRef};
    use openssl::ec::{EcGroup, EcKey, PointConversionForm};
    use openssl::ecdsa::EcdsaSig;
    use openssl::nid::Nid;
    use openssl::pkey::Private;

    fn be48(b: &BigNumRef) -> [u8; 48] {
        b.to_vec_padded(48).unwrap().try_into().unwrap()
    }

    fn key() -> (EcKey<Private>, CombKey) {
        let group = EcGroup::from_curve_name(Nid::SECP384R1).unwrap();
        let key = EcKey::generate(&group).unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        let sec1 = key
            .public_key()
            .to_bytes(&group, PointConversionForm::UNCOMPRESSED, &mut ctx)
            .unwrap();
        (key, CombKey::from_sec1(&sec1).unwrap())
    }

    fn openssl_verify(key: &EcKey<Private>, digest: &[u8], r: &[u8], s: &[u8]) -> bool {
        EcdsaSig::from_private_components(
            BigNum::from_slice(r).unwrap(),
            BigNum::from_slice(s).unwrap(),
        )
        .unwrap()
        .verify(digest, key)
        .unwrap_or(false)
    }

    /// Differential: on valid and broken signatures, the comb decides what OpenSSL decides.
    #[test]
    fn agrees_with_openssl() {
        let (key, comb) = key();
        let (_, other) = self::key();
        for i in 0u32..200 {
            let digest = openssl::sha::sha384(&i.to_be_bytes());
            let sig = EcdsaSig::sign(&digest, &key).unwrap();
            let (r, s) = (be48(sig.r()), be48(sig.s()));
            assert!(comb.verify_prehash(&digest, &r, &s), "valid signature {i}");
            assert!(!other.verify_prehash(&digest, &r, &s), "other key {i}");
            let mut d = digest;
            d[(i as usize) % 48] ^= 1 << (i % 8);
            assert!(!comb.verify_prehash(&d, &r, &s), "tampered digest {i}");
            let mut r2 = r;
            r2[(i as usize * 7) % 48] ^= 0x80 >> (i % 8);
            assert_eq!(
                comb.verify_prehash(&digest, &r2, &s),
                openssl_verify(&key, &digest, &r2, &s),
                "tampered r {i}"
            );
            let mut s2 = s;
            s2[47 - (i as usize) % 48] ^= 1;
            assert!(!comb.verify_prehash(&digest, &r, &s2), "tampered s {i}");
        }
    }

    #[test]
    fn out_of_range_scalars_and_bad_points_are_refused() {
        let (key, comb) = key();
        let digest = openssl::sha::sha384(b"report");
        let sig = EcdsaSig::sign(&digest, &key).unwrap();
        let (r, s) = (be48(sig.r()), be48(sig.s()));
        let group = EcGroup::from_curve_name(Nid::SECP384R1).unwrap();
        let mut order = BigNum::new().unwrap();
        group
            .order(&mut order, &mut BigNumContext::new().unwrap())
            .unwrap();
        let n = be48(&order);
        for bad in [[0u8; 48], [0xff; 48], n] {
            assert!(!comb.verify_prehash(&digest, &bad, &s));
            assert!(!comb.verify_prehash(&digest, &r, &bad));
        }
        // n - s is the other valid signature (ECDSA is malleable); both libraries accept it.
        let mut neg = BigNum::new().unwrap();
        neg.checked_sub(&order, sig.s()).unwrap();
        let neg = be48(&neg);
        assert!(openssl_verify(&key, &digest, &r, &neg));
        assert!(comb.verify_prehash(&digest, &r, &neg));

        let mut ctx = BigNumContext::new().unwrap();
        let mut sec1 = key
            .public_key()
            .to_bytes(&group, PointConversionForm::UNCOMPRESSED, &mut ctx)
            .unwrap();
        sec1[60] ^= 1; // off the curve
        assert!(CombKey::from_sec1(&sec1).is_none());
        assert!(CombKey::from_sec1(&[0u8]).is_none()); // the identity
        assert!(CombKey::from_sec1(b"").is_none());
    }
}
