//! Any bytes, decoded as every kind of value the SQL stores read back from a database: a
//! record or an error naming the damage, never a panic (`baton_sql::fuzzing::stored`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = baton_sql::fuzzing::stored(data) {
        panic!("{e}");
    }
});
