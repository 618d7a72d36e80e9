//! The fast path of [`crate::decode::decode`]: a borrowing scanner for the flat JSON
//! object producers write (the wire format of [`crate::event`]), allocating nothing.
//!
//! It handles the form every producer of this repository and the standard load write:
//! one object of the schema's fields, values that are strings without escapes,
//! integers of at most 18 digits or `null`, any JSON whitespace between tokens. On
//! anything else (an escape, a float, an unknown or repeated field, a missing one, a
//! syntax error) it answers `None` and the caller decodes with `serde_json`, which
//! stays the reference for what is valid and what each error says. So this path may
//! decline valid input but never accepts anything `serde_json` would refuse or reads a
//! value differently: the tests check that on generated variants of every field.
//!
//! Why: `serde_json` was a quarter of the speed layer's core time (issue 19's
//! profile); this scanner does the same job in a single pass over the bytes.

use std::borrow::Cow;

use crate::event::{Event, EventKind};

/// Parses `raw` if it is in the canonical flat form; `None` means "decode it the
/// general way", not "invalid".
pub fn parse(raw: &[u8]) -> Option<Event<'_>> {
    let mut s = Scanner { b: raw, i: 0 };
    let mut f = Fields::default();
    s.ws();
    s.expect(b'{')?;
    s.ws();
    if s.peek()? == b'}' {
        return None; // missing fields: let serde_json name them
    }
    let mut expected = 0;
    loop {
        // Producers write the fields in the schema's order: try the next one as a
        // literal before reading a key of any name (then the order resumes after it).
        let field = match s.canonical_key(expected) {
            Some(len) => {
                s.i += len;
                expected
            }
            None => {
                let key = s.string()?;
                s.ws();
                s.expect(b':')?;
                CANONICAL_KEYS.iter().position(|name| *name == key)?
            }
        };
        expected = field + 1;
        s.ws();
        f.set(field, &mut s)?;
        s.ws();
        match s.next()? {
            b',' => s.ws(),
            b'}' => break,
            _ => return None,
        }
    }
    s.ws();
    if s.i != raw.len() {
        return None;
    }
    f.finish()
}

/// The fields in the order of the schema's table (and of every producer here).
const CANONICAL_KEYS: [&str; 10] = [
    "v",
    "kind",
    "event_id",
    "ts",
    "user_id",
    "ad_id",
    "advertiser_id",
    "product_id",
    "cost_micros",
    "gmv_micros",
];

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

/// True when `b` starts with the literal `lit` (a constant: compared inline, without
/// a call to `memcmp`).
fn opens_with<const N: usize>(b: &[u8], lit: &[u8; N]) -> bool {
    b.get(..N).is_some_and(|head| head == lit)
}

impl<'a> Scanner<'a> {
    /// The length of field `field`'s opening `"name":` if the text continues with it.
    fn canonical_key(&self, field: usize) -> Option<usize> {
        let b = &self.b[self.i..];
        let found = match field {
            0 => opens_with(b, b"\"v\":"),
            1 => opens_with(b, b"\"kind\":"),
            2 => opens_with(b, b"\"event_id\":"),
            3 => opens_with(b, b"\"ts\":"),
            4 => opens_with(b, b"\"user_id\":"),
            5 => opens_with(b, b"\"ad_id\":"),
            6 => opens_with(b, b"\"advertiser_id\":"),
            7 => opens_with(b, b"\"product_id\":"),
            8 => opens_with(b, b"\"cost_micros\":"),
            9 => opens_with(b, b"\"gmv_micros\":"),
            _ => false,
        };
        found.then(|| CANONICAL_KEYS[field].len() + 3)
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// JSON whitespace (RFC 8259: space, tab, line feed, carriage return).
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A string without escapes or control characters, as valid UTF-8 (checked per
    /// string: outside strings, the scanner accepts ASCII only).
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let rest = &self.b[self.i..];
        let len = rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        let text = std::str::from_utf8(&rest[..len]).ok()?;
        self.i += len + 1;
        Some(text)
    }

    /// `null` -> `Some(None)`; an integer -> `Some(Some(n))`; else `None`.
    fn nullable_int(&mut self) -> Option<Option<i64>> {
        if self.b[self.i..].starts_with(b"null") {
            self.i += 4;
            return Some(None);
        }
        self.int().map(Some)
    }

    /// `-?(0|[1-9][0-9]*)` of at most 18 digits (so it fits an `i64`), not followed by
    /// a fraction or exponent, and not `-0`.
    fn int(&mut self) -> Option<i64> {
        let negative = self.peek()? == b'-';
        if negative {
            self.i += 1;
        }
        let start = self.i;
        let mut n: i64 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            if self.i - start == 18 {
                return None;
            }
            n = n * 10 + i64::from(c - b'0');
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || (digits > 1 && self.b[start] == b'0') {
            return None;
        }
        // serde_json reads `-0` as the float -0.0, which no integer field takes.
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) || (negative && n == 0) {
            return None;
        }
        Some(if negative { -n } else { n })
    }
}

/// The fields seen so far; each at most once.
#[derive(Default)]
struct Fields<'a> {
    v: Option<u16>,
    kind: Option<EventKind>,
    event_id: Option<&'a str>,
    ts: Option<i64>,
    user_id: Option<&'a str>,
    ad_id: Option<Option<i64>>,
    advertiser_id: Option<i64>,
    product_id: Option<Option<i64>>,
    cost_micros: Option<Option<i64>>,
    gmv_micros: Option<Option<i64>>,
}

/// Stores `value` in `slot` unless it was already set (a repeated field).
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

impl<'a> Fields<'a> {
    /// Reads the value of field `field` (an index into `CANONICAL_KEYS`).
    fn set(&mut self, field: usize, s: &mut Scanner<'a>) -> Option<()> {
        match field {
            0 => once(&mut self.v, u16::try_from(s.int()?).ok()?),
            1 => once(&mut self.kind, EventKind::parse(s.string()?)?),
            2 => once(&mut self.event_id, s.string()?),
            3 => once(&mut self.ts, s.int()?),
            4 => once(&mut self.user_id, s.string()?),
            5 => once(&mut self.ad_id, s.nullable_int()?),
            6 => once(&mut self.advertiser_id, s.int()?),
            7 => once(&mut self.product_id, s.nullable_int()?),
            8 => once(&mut self.cost_micros, s.nullable_int()?),
            9 => once(&mut self.gmv_micros, s.nullable_int()?),
            _ => None,
        }
    }

    fn finish(self) -> Option<Event<'a>> {
        Some(Event {
            v: self.v.unwrap_or(1),
            kind: self.kind?,
            event_id: Cow::Borrowed(self.event_id?),
            ts: self.ts?,
            user_id: Cow::Borrowed(self.user_id?),
            ad_id: self.ad_id.flatten(),
            advertiser_id: self.advertiser_id?,
            product_id: self.product_id.flatten(),
            cost_micros: self.cost_micros.flatten(),
            gmv_micros: self.gmv_micros.flatten(),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const CANONICAL: &str = r#"{"kind":"click","event_id":"t0-1","ts":1793491200001,"user_id":"u10389","ad_id":88709,"advertiser_id":887,"product_id":177409,"cost_micros":34567,"gmv_micros":null}"#;

    #[test]
    fn the_canonical_form_takes_the_fast_path_and_reads_as_serde_json_does() {
        let fast = parse(CANONICAL.as_bytes()).expect("canonical form");
        let reference: Event<'_> = serde_json::from_str(CANONICAL).unwrap();
        assert_eq!(fast, reference);
        assert!(
            matches!(fast.event_id, Cow::Borrowed(_)),
            "borrowed, not copied"
        );
    }

    #[test]
    fn each_field_opening_is_recognised_by_its_literal() {
        for (field, name) in CANONICAL_KEYS.iter().enumerate() {
            let text = format!("\"{name}\":1");
            let s = Scanner {
                b: text.as_bytes(),
                i: 0,
            };
            assert_eq!(s.canonical_key(field), Some(name.len() + 3), "{name}");
            assert_eq!(s.canonical_key((field + 1) % CANONICAL_KEYS.len()), None);
        }
    }

    #[test]
    fn forms_it_declines_go_to_serde_json() {
        for raw in [
            r#"{"kind":"click","event_id":"a\"b","ts":1,"user_id":"u","advertiser_id":1}"#,
            r#"{"kind":"click","event_id":"a","ts":1.0,"user_id":"u","advertiser_id":1}"#,
            r#"{"kind":"click","event_id":"a","ts":1,"ts":2,"user_id":"u","advertiser_id":1}"#,
            r#"{"kind":"click","event_id":"a","ts":1,"user_id":"u","advertiser_id":1,"x":1}"#,
            r#"{"kind":"click","event_id":"a","ts":01,"user_id":"u","advertiser_id":1}"#,
            r#"{"kind":"click","event_id":"a","ts":1,"user_id":"u"}"#,
            r#"{"kind":"click","event_id":"a","ts":1,"user_id":"u","advertiser_id":1} x"#,
            r#"{"kind":"click","event_id":"a","ts":1,"user_id":"u","advertiser_id":1,}"#,
            r#"{"kind":"clack","event_id":"a","ts":1,"user_id":"u","advertiser_id":1}"#,
            r#"{"kind":"click","event_id":"a","ts":1,"user_id":"u","advertiser_id":null}"#,
            r#"{"v":70000,"kind":"click","event_id":"a","ts":1,"user_id":"u","advertiser_id":1}"#,
            r#"{"kind":"click","event_id":"a","ts":1234567890123456789,"user_id":"u","advertiser_id":1}"#,
            "{}",
            "",
            "[1]",
        ] {
            assert_eq!(parse(raw.as_bytes()), None, "{raw}");
        }
    }

    /// One field's wire text: well-formed values, nulls, escapes, floats, big and
    /// negative numbers, wrong types.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            (-2_000_000_000_000_i64..2_000_000_000_000).prop_map(|n| n.to_string()),
            Just("0".to_owned()),
            Just("-0".to_owned()),
            Just("007".to_owned()),
            Just("1.5".to_owned()),
            Just("1e3".to_owned()),
            Just("65535".to_owned()),
            Just("65536".to_owned()),
            Just("9223372036854775807".to_owned()),
            Just("99999999999999999999".to_owned()),
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("\"click\"".to_owned()),
            Just("\"payment\"".to_owned()),
            Just("\"u\\u0031\"".to_owned()),
            Just("\"é-1\"".to_owned()),
            "[a-z0-9:-]{0,6}".prop_map(|s| format!("\"{s}\"")),
            Just("[1]".to_owned()),
        ]
    }

    fn key() -> impl Strategy<Value = &'static str> {
        let mut keys = CANONICAL_KEYS.to_vec();
        keys.push("extra");
        prop::sample::select(keys)
    }

    fn ws() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", " ", "\n", "\t ", "\u{a0}"])
    }

    /// Mostly valid events: the required fields first, then random extra members.
    fn object() -> impl Strategy<Value = String> {
        let required = (
            prop::sample::select(vec!["\"click\"", "\"exposure\"", "\"order\"", "\"x\""]),
            value(),
            value(),
        );
        (
            required,
            prop::collection::vec((key(), value(), ws()), 0..6),
            ws(),
        )
            .prop_map(|((kind, ts, adv), extra, pad)| {
                let mut members = vec![
                    format!("\"kind\":{kind}"),
                    "\"event_id\":\"e1\"".to_owned(),
                    format!("\"ts\":{ts}"),
                    "\"user_id\":\"u1\"".to_owned(),
                    format!("\"advertiser_id\"{pad}:{pad}{adv}"),
                ];
                members.extend(
                    extra
                        .into_iter()
                        .map(|(k, v, w)| format!("{w}\"{k}\"{w}:{v}{w}")),
                );
                format!("{pad}{{{}}}{pad}", members.join(","))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn whenever_it_answers_it_agrees_with_serde_json(raw in object()) {
            let reference = serde_json::from_str::<Event<'_>>(&raw).ok();
            if let Some(fast) = parse(raw.as_bytes()) {
                prop_assert_eq!(Some(fast), reference, "{}", raw);
            }
        }

        #[test]
        fn it_answers_for_every_canonical_event(
            ts in 0_i64..4_000_000_000_000,
            adv in 1_i64..1_000_000,
            cost in prop::option::of(0_i64..1_000_000_000),
        ) {
            let e = Event {
                v: 1,
                kind: EventKind::Click,
                event_id: "t1-2".into(),
                ts,
                user_id: "u3".into(),
                ad_id: Some(adv * 100),
                advertiser_id: adv,
                product_id: Some(adv * 200),
                cost_micros: cost,
                gmv_micros: None,
            };
            let wire = e.to_json();
            prop_assert_eq!(parse(&wire), Some(e));
        }
    }
}
