//! Country codes and country sets compiled to bitsets over the 26×26
//! ISO 3166-1 alpha-2 code space.

/// Every assigned ISO 3166-1 alpha-2 code, plus `XK` (Kosovo, user-assigned
/// but in general use). Policy files may only name these codes.
const ISO_3166_ALPHA2: &str = "\
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ \
BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ \
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ \
DE DJ DK DM DO DZ \
EC EE EG EH ER ES ET \
FI FJ FK FM FO FR \
GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY \
HK HM HN HR HT HU \
ID IE IL IM IN IO IQ IR IS IT \
JE JM JO JP \
KE KG KH KI KM KN KP KR KW KY KZ \
LA LB LC LI LK LR LS LT LU LV LY \
MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ \
NA NC NE NF NG NI NL NO NP NR NU NZ \
OM \
PA PE PF PG PH PK PL PM PN PR PS PT PW PY \
QA \
RE RO RS RU RW \
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ \
TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ \
UA UG UM US UY UZ \
VA VC VE VG VI VN VU \
WF WS \
XK \
YE YT \
ZA ZM ZW";

const WORDS: usize = (26_usize * 26).div_ceil(64);

/// Index of a two-letter code in the 26×26 space; case-insensitive.
/// `None` for anything that is not exactly two ASCII letters.
pub(crate) fn index(code: &str) -> Option<usize> {
    match code.as_bytes() {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            let a = usize::from(a.to_ascii_uppercase() - b'A');
            let b = usize::from(b.to_ascii_uppercase() - b'A');
            Some(a * 26 + b)
        }
        _ => None,
    }
}

/// A set of countries: one bit per alpha-2 code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CountrySet {
    bits: [u64; WORDS],
}

impl CountrySet {
    /// The empty set.
    pub const fn empty() -> Self {
        CountrySet { bits: [0; WORDS] }
    }

    /// Add a code; returns `false` (and adds nothing) if it is not two
    /// ASCII letters.
    pub fn insert(&mut self, code: &str) -> bool {
        match index(code) {
            Some(i) => {
                self.bits[i / 64] |= 1 << (i % 64);
                true
            }
            None => false,
        }
    }

    /// Whether the set holds `code` (case-insensitive). Anything that is
    /// not a two-letter code is never in a set.
    #[inline]
    pub fn contains(&self, code: &str) -> bool {
        match index(code) {
            Some(i) => self.bits[i / 64] & (1 << (i % 64)) != 0,
            None => false,
        }
    }

    /// Add every member of `other`.
    pub fn union_with(&mut self, other: &CountrySet) {
        for (a, b) in self.bits.iter_mut().zip(other.bits.iter()) {
            *a |= *b;
        }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }

    /// The members, upper case, in alphabetical order.
    pub fn codes(&self) -> Vec<String> {
        (0..26 * 26)
            .filter(|i| self.bits[i / 64] & (1 << (i % 64)) != 0)
            .map(|i| {
                let a = char::from(b'A' + (i / 26) as u8);
                let b = char::from(b'A' + (i % 26) as u8);
                format!("{a}{b}")
            })
            .collect()
    }
}

/// The set of every assigned ISO 3166-1 alpha-2 code (plus `XK`).
pub fn assigned() -> CountrySet {
    let mut s = CountrySet::empty();
    for c in ISO_3166_ALPHA2.split_ascii_whitespace() {
        s.insert(c);
    }
    s
}

/// Whether `code` is an assigned ISO 3166-1 alpha-2 code, upper case.
pub fn is_assigned(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) && assigned().contains(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_list_is_iso_plus_kosovo() {
        assert_eq!(assigned().len(), 250);
        assert!(is_assigned("MO"));
        assert!(is_assigned("US"));
        assert!(!is_assigned("ZZ"));
        assert!(!is_assigned("us"));
        assert!(!is_assigned("USA"));
    }

    #[test]
    fn set_operations() {
        let mut s = CountrySet::empty();
        assert!(s.insert("CN"));
        assert!(!s.insert("C"));
        assert!(!s.insert("ÇN"));
        assert!(s.contains("CN") && s.contains("cn"));
        assert!(!s.contains("MO") && !s.contains("") && !s.contains("CNN"));
        let mut t = CountrySet::empty();
        t.insert("MO");
        t.insert("ZW");
        t.insert("AA");
        s.union_with(&t);
        assert_eq!(s.codes(), vec!["AA", "CN", "MO", "ZW"]);
        assert_eq!(s.len(), 4);
        assert!(!s.is_empty() && CountrySet::empty().is_empty());
    }
}
