//! Vocabularies stored as text columns: an enum whose values are written by name, so that
//! a row can only ever hold a word of the vocabulary. [`text_enum!`](crate::text_enum) gives one its
//! `as_str`, `ALL`, `Display`, `FromStr` and the diesel `Text` mapping (written by name; a
//! read parses the name).

/// Declares a vocabulary: `text_enum!(Name, "doc", { Variant => "name", ... })`.
#[macro_export]
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            diesel::expression::AsExpression, diesel::deserialize::FromSqlRow,
        )]
        #[diesel(sql_type = diesel::sql_types::Text)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| {
                        let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                        format!("{s:?} is not one of {}", names.join(", "))
                    })
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                <str as diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg>>::to_sql(
                    self.as_str(),
                    out,
                )
            }
        }

        impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                let text = <String as diesel::deserialize::FromSql<
                    diesel::sql_types::Text,
                    diesel::pg::Pg,
                >>::from_sql(bytes)?;
                text.parse().map_err(Into::into)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::db::anomalies::AnomalyKind;
    use crate::db::decisions::DecisionOutcome;

    #[test]
    fn every_name_reads_back_and_an_unknown_one_names_the_vocabulary() {
        for v in DecisionOutcome::ALL {
            assert_eq!(v.as_str().parse::<DecisionOutcome>(), Ok(*v));
            assert_eq!(v.to_string(), v.as_str());
        }
        for v in AnomalyKind::ALL {
            assert_eq!(v.as_str().parse::<AnomalyKind>(), Ok(*v));
        }
        let err = "bogus".parse::<AnomalyKind>().unwrap_err();
        assert!(
            err.contains("amount_mismatch, paid_after_close, paid_missing_from_bill"),
            "{err}"
        );
        assert_eq!(
            serde_json::to_string(&DecisionOutcome::RefundRequested).unwrap(),
            "\"refund_requested\""
        );
    }
}
