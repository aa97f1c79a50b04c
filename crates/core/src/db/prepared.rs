//! Hand-written SQL that runs as a prepared statement cached on each connection.
//!
//! diesel's `sql_query` marks itself unsafe to cache, so every run is parsed, planned and
//! prepared anew, which costs the server a plan and the client an extra round trip. The
//! statements on hot paths (settling a group of decisions, creating an order) are fixed
//! text with typed parameters, which is exactly what a cached statement is for: this type
//! says so, and diesel caches it by its SQL text.
//!
//! ```ignore
//! prepared("SELECT nextval($1::regclass) AS id FROM generate_series(1, $2)")
//!     .bind::<Text, _>("orders_id_seq")
//!     .bind::<BigInt, _>(10_i64)
//!     .load::<Next>(conn)
//! ```
//! Parameters are written `$1`, `$2`, ... in order, each once; a statement whose
//! placeholders do not match its binds fails with an error naming the statement.

use std::marker::PhantomData;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::{QueryResult, result::Error};

/// A statement with fixed text and the parameters bound so far.
#[derive(Debug, Clone)]
pub struct Prepared<B> {
    sql: &'static str,
    /// The text around the placeholders, split once (diesel walks a query several times
    /// per run), or why it cannot be split.
    text: Result<Vec<&'static str>, String>,
    binds: B,
}

/// One bound parameter of SQL type `ST`.
#[derive(Debug, Clone)]
pub struct Bind<ST, V> {
    value: V,
    sql_type: PhantomData<ST>,
}

/// A statement with no parameters bound yet.
pub fn prepared(sql: &'static str) -> Prepared<()> {
    Prepared {
        sql,
        text: split(sql),
        binds: (),
    }
}

impl<B> Prepared<B> {
    /// Binds the next parameter (`$1`, then `$2`, ...).
    pub fn bind<ST, V>(self, value: V) -> Prepared<(B, Bind<ST, V>)> {
        Prepared {
            sql: self.sql,
            text: self.text,
            binds: (
                self.binds,
                Bind {
                    value,
                    sql_type: PhantomData,
                },
            ),
        }
    }
}

/// One field of every row, as the value of an array parameter (`unnest($1::bigint[])`).
pub fn column<R, T>(rows: &[R], field: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(field).collect()
}

/// The bound parameters, walked in order.
pub trait Binds {
    /// How many parameters are bound.
    const COUNT: usize;

    /// Pushes each parameter after the SQL text that precedes it.
    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>, text: &[&'static str]) -> QueryResult<()>;
}

impl Binds for () {
    const COUNT: usize = 0;

    fn walk<'b>(
        &'b self,
        _out: &mut AstPass<'_, 'b, Pg>,
        _text: &[&'static str],
    ) -> QueryResult<()> {
        Ok(())
    }
}

impl<B, ST, V> Binds for (B, Bind<ST, V>)
where
    B: Binds,
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    const COUNT: usize = B::COUNT + 1;

    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>, text: &[&'static str]) -> QueryResult<()> {
        self.0.walk(out, text)?;
        out.push_sql(text[B::COUNT]);
        out.push_bind_param::<ST, V>(&self.1.value)
    }
}

/// Splits `sql` at its placeholders `$1`, `$2`, ... (which must appear in order, once
/// each): the text before each placeholder, then the text after the last one.
fn split(sql: &'static str) -> Result<Vec<&'static str>, String> {
    let mut pieces = Vec::new();
    let mut rest = sql;
    let mut next = 1usize;
    while let Some(at) = rest.find('$') {
        let digits = rest[at + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        if digits == 0 {
            return Err(format!(
                "a '$' not followed by a parameter number in {sql:?}"
            ));
        }
        let number: usize = rest[at + 1..at + 1 + digits]
            .parse()
            .map_err(|_| format!("bad parameter number in {sql:?}"))?;
        if number != next {
            return Err(format!(
                "parameter ${number} where ${next} was expected in {sql:?}"
            ));
        }
        pieces.push(&rest[..at]);
        rest = &rest[at + 1 + digits..];
        next += 1;
    }
    pieces.push(rest);
    Ok(pieces)
}

impl<B: Binds> QueryFragment<Pg> for Prepared<B> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let text = self
            .text
            .as_ref()
            .map_err(|e| Error::QueryBuilderError(e.clone().into()))?;
        if text.len() != B::COUNT + 1 {
            return Err(Error::QueryBuilderError(
                format!(
                    "{} parameters bound to a statement with {}: {:?}",
                    B::COUNT,
                    text.len() - 1,
                    self.sql
                )
                .into(),
            ));
        }
        self.binds.walk(&mut out, text)?;
        out.push_sql(text[B::COUNT]);
        Ok(())
    }
}

impl<B> QueryId for Prepared<B> {
    type QueryId = ();
    // Cached by its SQL text (and parameter types), not by its Rust type: every statement
    // shares this type.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B> Query for Prepared<B> {
    type SqlType = Untyped;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_numbered_placeholders_in_order() {
        assert_eq!(
            split("SELECT $1, $2 FROM t WHERE x = $3"),
            Ok(vec!["SELECT ", ", ", " FROM t WHERE x = ", ""])
        );
        assert_eq!(split("SELECT 1"), Ok(vec!["SELECT 1"]));
        assert!(split("SELECT $2").unwrap_err().contains("$2 where $1"));
        assert!(split("SELECT $1, $1").unwrap_err().contains("$1 where $2"));
        assert!(split("SELECT '$'").unwrap_err().contains("not followed"));
    }
}
