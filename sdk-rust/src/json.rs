//! A small JSON library, so plugins can take and return JSON without serde.
//!
//! * [`parse`] / [`parse_bytes`] read RFC 8259 JSON into a [`Value`] (nesting is limited to
//!   [`MAX_DEPTH`] levels so hostile input cannot exhaust the stack);
//! * [`Value::to_json`] / [`Value::to_vec`] (and `Display`) write compact JSON;
//!   [`Value::to_pretty_json`] writes it indented;
//! * objects keep their keys in insertion order, so output is deterministic;
//! * integers that fit an `i64` stay exact ([`Value::Int`]); other numbers are [`Value::Float`];
//! * accessors (`as_str`, `as_i64`, `v["key"]`, ...) and `require_*` / `optional_*` helpers that
//!   turn a missing or mistyped field into an [`Error::InvalidInput`] naming the field;
//! * [`handler`] adapts `fn(Value) -> Result<Value>` to a hook handler over bytes.
//!
//! ```
//! use plugbox_sdk::json::{self, Value};
//! let v = json::parse(r#"{"text": "a b a", "top_n": 2}"#).unwrap();
//! assert_eq!(v["text"].as_str(), Some("a b a"));
//! assert_eq!(v.optional_i64("top_n").unwrap(), Some(2));
//! let out = Value::object([("words", Value::from(3)), ("ok", true.into())]);
//! assert_eq!(out.to_json(), r#"{"words":3,"ok":true}"#);
//! ```

use std::fmt::{self, Write as _};
use std::ops::Index;

use crate::error::{Error, Result};

/// How deeply arrays and objects may nest in parsed input.
pub const MAX_DEPTH: usize = 128;

/// A JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number written without fraction or exponent that fits an `i64`.
    Int(i64),
    /// Any other number. Non-finite floats are written as `null`.
    Float(f64),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object, keys in insertion order.
    Object(Map),
}

static NULL: Value = Value::Null;

/// A JSON object: string keys in insertion order, each at most once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Map {
    entries: Vec<(String, Value)>,
}

impl Map {
    /// An empty object.
    pub fn new() -> Self {
        Map {
            entries: Vec::new(),
        }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value of `key`, mutably, if present.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.entries
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Sets `key` to `value`, keeping the key's position when it exists (then returns the old
    /// value) and appending it otherwise.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        let key = key.into();
        let value = value.into();
        match self.get_mut(&key) {
            Some(slot) => Some(std::mem::replace(slot, value)),
            None => {
                self.entries.push((key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(at).1)
    }

    /// True when `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The keys in insertion order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Map {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = Map::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

impl IntoIterator for Map {
    type Item = (String, Value);
    type IntoIter = std::vec::IntoIter<(String, Value)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

// ------------------------------------------------------------------------------ construction

impl Value {
    /// An object from `(key, value)` pairs, in order (a repeated key keeps its last value).
    pub fn object<K, V, I>(pairs: I) -> Value
    where
        K: Into<String>,
        V: Into<Value>,
        I: IntoIterator<Item = (K, V)>,
    {
        Value::Object(pairs.into_iter().collect())
    }

    /// An empty object, `{}`: the start of an object built up with [`Value::insert`].
    ///
    /// ```
    /// use plugbox_sdk::json::Value;
    ///
    /// let mut out = Value::empty_object();
    /// assert_eq!(out.to_json(), "{}");
    /// out.insert("count", 3);
    /// assert_eq!(out.to_json(), r#"{"count":3}"#);
    /// ```
    ///
    /// (`Value::object` of an empty list needs its types spelled out,
    /// `Value::object(Vec::<(String, Value)>::new())`; this is the short form.)
    pub fn empty_object() -> Value {
        Value::Object(Map::new())
    }

    /// An array from values.
    pub fn array<V: Into<Value>, I: IntoIterator<Item = V>>(items: I) -> Value {
        Value::Array(items.into_iter().map(Into::into).collect())
    }

    /// On an object, sets `key` (see [`Map::insert`]); on `null`, first turns it into an empty
    /// object. Returns false (and changes nothing) on any other value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> bool {
        if self.is_null() {
            *self = Value::Object(Map::new());
        }
        match self {
            Value::Object(map) => {
                map.insert(key, value);
                true
            }
            _ => false,
        }
    }

    /// On an array, appends `value`; on `null`, first turns it into an empty array. Returns
    /// false (and changes nothing) on any other value.
    pub fn push(&mut self, value: impl Into<Value>) -> bool {
        if self.is_null() {
            *self = Value::Array(Vec::new());
        }
        match self {
            Value::Array(items) => {
                items.push(value.into());
                true
            }
            _ => false,
        }
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::Int(i64::from(v))
            }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(v as f64),
        }
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::from(v as u64)
    }
}

impl From<isize> for Value {
    fn from(v: isize) -> Self {
        Value::Int(v as i64)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<f32> for Value {
    fn from(v: f32) -> Self {
        Value::Float(f64::from(v))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::String(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::String(v.clone())
    }
}

impl From<Map> for Value {
    fn from(v: Map) -> Self {
        Value::Object(v)
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Value::Array(v.into_iter().map(Into::into).collect())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        match v {
            Some(v) => v.into(),
            None => Value::Null,
        }
    }
}

// --------------------------------------------------------------------------------- accessors

impl Value {
    /// True for `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The number as an `i64`, if it is an integer in range (`2.0` counts, `2.5` does not).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Float(f)
                if f.fract() == 0.0
                    && *f >= -9.223_372_036_854_776e18
                    && *f < 9.223_372_036_854_776e18 =>
            {
                Some(*f as i64)
            }
            _ => None,
        }
    }

    /// The number as a `u64`, if it is a non-negative integer in range.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(i) => u64::try_from(*i).ok(),
            Value::Float(f) if f.fract() == 0.0 && *f >= 0.0 && *f < 1.844_674_407_370_955_2e19 => {
                Some(*f as u64)
            }
            _ => None,
        }
    }

    /// The number as an `f64`, if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The items, if this is an array.
    pub fn as_array(&self) -> Option<&Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The map, if this is an object.
    pub fn as_object(&self) -> Option<&Map> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    /// The value of `key`, if this is an object that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_object().and_then(|m| m.get(key))
    }

    /// The JSON type name: `null`, `boolean`, `number`, `string`, `array` or `object`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) | Value::Float(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    fn wrong_type(key: &str, expected: &str, got: &Value) -> Error {
        Error::InvalidInput(format!(
            "field \"{}\" must be {}, got {}",
            key,
            expected,
            got.type_name()
        ))
    }

    /// The field `key` of this object, or [`Error::InvalidInput`] when this is not an object or
    /// the field is missing.
    pub fn require(&self, key: &str) -> Result<&Value> {
        match self {
            Value::Object(m) => m
                .get(key)
                .ok_or_else(|| Error::InvalidInput(format!("missing field \"{}\"", key))),
            other => Err(Error::InvalidInput(format!(
                "expected a JSON object with field \"{}\", got {}",
                key,
                other.type_name()
            ))),
        }
    }

    /// The string field `key` (missing or not a string: [`Error::InvalidInput`]).
    pub fn require_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str()
            .ok_or_else(|| Self::wrong_type(key, "a string", v))
    }

    /// The integer field `key` (missing or not an integer: [`Error::InvalidInput`]).
    pub fn require_i64(&self, key: &str) -> Result<i64> {
        let v = self.require(key)?;
        v.as_i64()
            .ok_or_else(|| Self::wrong_type(key, "an integer", v))
    }

    fn optional(&self, key: &str) -> Result<Option<&Value>> {
        match self {
            Value::Object(m) => Ok(m.get(key).filter(|v| !v.is_null())),
            Value::Null => Ok(None),
            other => Err(Error::InvalidInput(format!(
                "expected a JSON object, got {}",
                other.type_name()
            ))),
        }
    }

    /// The string field `key`, `None` when it is missing or `null` (this may also be `null`);
    /// [`Error::InvalidInput`] when it has another type.
    pub fn optional_str(&self, key: &str) -> Result<Option<&str>> {
        match self.optional(key)? {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| Self::wrong_type(key, "a string", v)),
        }
    }

    /// The integer field `key`, `None` when missing or `null`; see [`Value::optional_str`].
    pub fn optional_i64(&self, key: &str) -> Result<Option<i64>> {
        match self.optional(key)? {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| Self::wrong_type(key, "an integer", v)),
        }
    }

    /// The boolean field `key`, `None` when missing or `null`; see [`Value::optional_str`].
    pub fn optional_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.optional(key)? {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| Self::wrong_type(key, "a boolean", v)),
        }
    }
}

impl Index<&str> for Value {
    type Output = Value;
    /// `v["key"]`: the field, or `null` when missing or when `v` is not an object.
    fn index(&self, key: &str) -> &Value {
        self.get(key).unwrap_or(&NULL)
    }
}

impl Index<usize> for Value {
    type Output = Value;
    /// `v[i]`: the item, or `null` when out of range or when `v` is not an array.
    fn index(&self, i: usize) -> &Value {
        self.as_array().and_then(|a| a.get(i)).unwrap_or(&NULL)
    }
}

// ----------------------------------------------------------------------------------- writing

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_value(out: &mut String, v: &Value, indent: Option<usize>, level: usize) {
    let newline = |out: &mut String, level: usize| {
        if let Some(width) = indent {
            out.push('\n');
            for _ in 0..width * level {
                out.push(' ');
            }
        }
    };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Int(i) => {
            let _ = write!(out, "{}", i);
        }
        Value::Float(f) if f.is_finite() => {
            let _ = write!(out, "{:?}", f);
        }
        Value::Float(_) => out.push_str("null"),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, level + 1);
                write_value(out, item, indent, level + 1);
            }
            if !items.is_empty() {
                newline(out, level);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, level + 1);
                write_string(out, k);
                out.push(':');
                if indent.is_some() {
                    out.push(' ');
                }
                write_value(out, item, indent, level + 1);
            }
            if !map.is_empty() {
                newline(out, level);
            }
            out.push('}');
        }
    }
}

impl Value {
    /// Compact JSON text (no spaces), keys in insertion order.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        write_value(&mut out, self, None, 0);
        out
    }

    /// JSON text indented by two spaces per level.
    pub fn to_pretty_json(&self) -> String {
        let mut out = String::new();
        write_value(&mut out, self, Some(2), 0);
        out
    }

    /// Compact JSON as UTF-8 bytes, e.g. to return from a hook.
    pub fn to_vec(&self) -> Vec<u8> {
        self.to_json().into_bytes()
    }
}

impl fmt::Display for Value {
    /// Compact JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

/// `s` as a JSON string literal, quotes included.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_string(&mut out, s);
    out
}

// ----------------------------------------------------------------------------------- parsing

/// Why JSON text could not be parsed, and where (byte offset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset of the problem in the input.
    pub offset: usize,
    /// What is wrong.
    pub message: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

impl std::error::Error for ParseError {}

/// Parses JSON text.
pub fn parse(text: &str) -> std::result::Result<Value, ParseError> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("trailing characters after the JSON value"));
    }
    Ok(v)
}

/// Parses JSON from bytes, which must be UTF-8.
pub fn parse_bytes(bytes: &[u8]) -> std::result::Result<Value, ParseError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text),
        Err(e) => Err(ParseError {
            offset: e.valid_up_to(),
            message: "invalid UTF-8",
        }),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, message: &'static str) -> ParseError {
        ParseError {
            offset: self.i,
            message,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &'static [u8], v: Value) -> std::result::Result<Value, ParseError> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn value(&mut self, depth: usize) -> std::result::Result<Value, ParseError> {
        match self.peek() {
            None => Err(self.err("unexpected end of input")),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'"') => self.string().map(Value::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => {
                if depth >= MAX_DEPTH {
                    return Err(self.err("nesting too deep"));
                }
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    self.ws();
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return Err(self.err("expected ',' or ']'")),
                    }
                }
            }
            Some(b'{') => {
                if depth >= MAX_DEPTH {
                    return Err(self.err("nesting too deep"));
                }
                self.i += 1;
                let mut map = Map::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(Value::Object(map));
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(self.err("expected a string key"));
                    }
                    let key = self.string()?;
                    self.ws();
                    if self.peek() != Some(b':') {
                        return Err(self.err("expected ':'"));
                    }
                    self.i += 1;
                    self.ws();
                    let v = self.value(depth + 1)?;
                    map.insert(key, v);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Value::Object(map));
                        }
                        _ => return Err(self.err("expected ',' or '}'")),
                    }
                }
            }
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> std::result::Result<Value, ParseError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        let mut integral = true;
        if self.peek() == Some(b'.') {
            integral = false;
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number: digits expected after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            integral = false;
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number: digits expected in the exponent"));
            }
        }
        // The grammar above admits only ASCII, so this cannot fail.
        let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
        if integral {
            if let Ok(i) = text.parse::<i64>() {
                return Ok(Value::Int(i));
            }
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Float(f)),
            _ => Err(ParseError {
                offset: start,
                message: "number out of range",
            }),
        }
    }

    fn hex4(&mut self) -> std::result::Result<u32, ParseError> {
        if self.i + 4 > self.s.len() {
            return Err(self.err("truncated \\u escape"));
        }
        let mut n = 0u32;
        for _ in 0..4 {
            let d = match self.s[self.i] {
                c @ b'0'..=b'9' => c - b'0',
                c @ b'a'..=b'f' => c - b'a' + 10,
                c @ b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(self.err("invalid \\u escape")),
            };
            n = n * 16 + u32::from(d);
            self.i += 1;
        }
        Ok(n)
    }

    fn string(&mut self) -> std::result::Result<String, ParseError> {
        self.i += 1; // opening quote
        let mut out = String::new();
        loop {
            // Copy the run of plain characters at once; the input is valid UTF-8 and the run
            // stops only at ASCII bytes, so it is valid UTF-8 too.
            let start = self.i;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            match std::str::from_utf8(&self.s[start..self.i]) {
                Ok(run) => out.push_str(run),
                Err(_) => {
                    return Err(ParseError {
                        offset: start,
                        message: "invalid UTF-8",
                    })
                }
            }
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let esc = match self.peek() {
                        Some(e) => e,
                        None => return Err(self.err("unterminated string")),
                    };
                    self.i += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{08}'),
                        b'f' => out.push('\u{0c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !self.s[self.i..].starts_with(b"\\u") {
                                    return Err(self.err("unpaired surrogate in \\u escape"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("unpaired surrogate in \\u escape"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(self.err("unpaired surrogate in \\u escape"));
                            } else {
                                hi
                            };
                            match char::from_u32(code) {
                                Some(c) => out.push(c),
                                None => return Err(self.err("invalid \\u escape")),
                            }
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                Some(_) => return Err(self.err("control character in string")),
            }
        }
    }
}

// ----------------------------------------------------------------------------------- handler

/// Adapts a JSON hook handler to the byte handler [`hooks!`](crate::hooks) expects: the payload
/// is parsed as JSON (an empty payload reads as `null`; invalid JSON fails the hook with
/// [`Error::InvalidInput`]) and the returned value is written as compact JSON.
///
/// ```ignore
/// fn stats(input: Value) -> Result<Value> { ... }
/// plugbox_sdk::hooks! { "text.stats" => plugbox_sdk::json::handler(stats) }
/// ```
pub fn handler<F>(f: F) -> impl Fn(Vec<u8>) -> Result<Vec<u8>>
where
    F: Fn(Value) -> Result<Value>,
{
    move |payload: Vec<u8>| {
        let input = if payload.iter().all(|b| b" \t\r\n".contains(b)) {
            Value::Null
        } else {
            parse_bytes(&payload)?
        };
        Ok(f(input)?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_is_an_empty_object() {
        let v = Value::empty_object();
        assert_eq!(v.to_json(), "{}");
        assert_eq!(v.as_object().map(|m| m.len()), Some(0));
        assert_eq!(v, Value::object(Vec::<(String, Value)>::new()));
        assert_eq!(v, parse("{}").unwrap());
        let mut v = v;
        assert!(v.insert("a", 1));
        assert_eq!(v.to_json(), r#"{"a":1}"#);
    }

    #[test]
    fn round_trip() {
        let text =
            r#"{"a":[1,-2,3.5,1e300,true,false,null],"b":{"c":"x\"y\\z\n\u0001é😀"},"d":-0.0}"#;
        let v = parse(text).unwrap();
        assert_eq!(v["a"][0], Value::Int(1));
        assert_eq!(v["a"][2], Value::Float(3.5));
        assert_eq!(v["b"]["c"].as_str(), Some("x\"y\\z\n\u{1}é😀"));
        let again = parse(&v.to_json()).unwrap();
        assert_eq!(v, again);
        assert_eq!(parse(&v.to_pretty_json()).unwrap(), v);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse("9223372036854775807").unwrap(), Value::Int(i64::MAX));
        assert_eq!(
            parse("9223372036854775808").unwrap(),
            Value::Float(9.223_372_036_854_776e18)
        );
        assert_eq!(parse("2.0").unwrap().as_i64(), Some(2));
        assert_eq!(parse("2.5").unwrap().as_i64(), None);
        assert_eq!(Value::Float(1.0).to_json(), "1.0");
        assert_eq!(Value::Float(f64::NAN).to_json(), "null");
        for bad in ["01", "1.", ".5", "-", "1e", "+1", "1e999", "0x10"] {
            assert!(parse(bad).is_err(), "{}", bad);
        }
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(parse(r#""\ud83d\ude00""#).unwrap().as_str(), Some("😀"));
        assert!(parse(r#""\ud83d""#).is_err());
        assert!(parse(r#""\ude00""#).is_err());
        assert!(parse("\"a\u{1}\"").is_err());
        assert!(parse("\"abc").is_err());
        assert_eq!(quote("a\"b\u{7f}"), r#""a\"b\u007f""#);
        assert!(parse_bytes(b"\"\xff\"").is_err());
    }

    #[test]
    fn structure_errors() {
        for bad in [
            "",
            "[1,]",
            "{\"a\" 1}",
            "{\"a\":1,}",
            "[1 2]",
            "{1:2}",
            "nul",
            "[] x",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.to_string().is_empty());
        }
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(&deep).unwrap_err().message, "nesting too deep");
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn objects_keep_order_and_last_duplicate() {
        let v = parse(r#"{"z":1,"a":2,"z":3}"#).unwrap();
        assert_eq!(v.to_json(), r#"{"z":3,"a":2}"#);
        let mut o = Value::Null;
        assert!(o.insert("k", "v"));
        assert!(o.insert("n", 5u64));
        assert_eq!(o.to_json(), r#"{"k":"v","n":5}"#);
        assert!(!Value::Int(1).insert("x", 1));
    }

    #[test]
    fn field_helpers() {
        let v = parse(r#"{"s":"x","n":3,"b":true,"z":null}"#).unwrap();
        assert_eq!(v.require_str("s").unwrap(), "x");
        assert_eq!(v.require_i64("n").unwrap(), 3);
        assert_eq!(v.optional_i64("z").unwrap(), None);
        assert_eq!(v.optional_bool("b").unwrap(), Some(true));
        assert_eq!(v.optional_str("missing").unwrap(), None);
        let e = v.require_str("n").unwrap_err();
        assert_eq!(
            e,
            Error::InvalidInput("field \"n\" must be a string, got number".into())
        );
        assert_eq!(v.require("q").unwrap_err().kind(), "invalid-input");
        assert!(Value::Int(1).optional_str("a").is_err());
        assert_eq!(Value::Null.optional_str("a").unwrap(), None);
    }

    #[test]
    fn handler_adapter() {
        let h = handler(|v: Value| Ok(Value::object([("got", v)])));
        assert_eq!(h(b"[1]".to_vec()).unwrap(), br#"{"got":[1]}"#.to_vec());
        assert_eq!(h(Vec::new()).unwrap(), br#"{"got":null}"#.to_vec());
        assert_eq!(h(b"{".to_vec()).unwrap_err().kind(), "invalid-input");
    }
}
