//! Wiring: typed handles to values ([`Out`], [`FlowInput`], [`Const`]) and the [`Args`] trait
//! that turns them into an atom's inputs, checked against the task's input type by the
//! compiler.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::compile::WiringError;
use crate::engine::Outcome;
use crate::failure::TaskError;
use crate::model::Inputs;

/// A typed handle to the output of an atom: what [`TypedFlow::add`](super::TypedFlow::add)
/// returns. Pass it (or a reference to it) as another atom's input: that atom then runs after
/// this one and gets its output, and the compiler checks the types match.
///
/// Behind it is a symbol named like the atom, which the atom provides: use
/// [`Out::symbol`] to read it from an untyped atom, and [`Out::get`] to read the output from
/// an [`Outcome`].
pub struct Out<T> {
    atom: Arc<str>,
    symbol: Arc<str>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Out<T> {
    pub(crate) fn new(atom: impl Into<Arc<str>>, symbol: impl Into<Arc<str>>) -> Self {
        Self {
            atom: atom.into(),
            symbol: symbol.into(),
            _type: PhantomData,
        }
    }

    /// The atom whose output this is.
    #[must_use]
    pub fn atom(&self) -> &str {
        &self.atom
    }

    /// The symbol the output is provided as.
    #[must_use]
    pub fn symbol(&self) -> &str {
        &self.symbol
    }
}

impl<T: DeserializeOwned> Out<T> {
    /// The output, from the outcome of a run: `None` if the atom did not succeed.
    ///
    /// # Errors
    /// If the stored output does not deserialize as `T` (a run made by another definition).
    pub fn get(&self, outcome: &Outcome) -> Result<Option<T>, serde_json::Error> {
        outcome.get(&self.symbol)
    }
}

impl<T> Clone for Out<T> {
    fn clone(&self) -> Self {
        Self {
            atom: self.atom.clone(),
            symbol: self.symbol.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Out<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Out")
            .field("atom", &self.atom)
            .field("symbol", &self.symbol)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

/// A typed handle to one of the flow's inputs (the values a run is created with), from
/// [`TypedFlow::input`](super::TypedFlow::input).
pub struct FlowInput<T> {
    name: Arc<str>,
    _type: PhantomData<fn() -> T>,
}

impl<T> FlowInput<T> {
    /// The flow input named `name`.
    #[must_use]
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            _type: PhantomData,
        }
    }

    /// The input's name: the key it has in the run's [`Inputs`].
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<T: Serialize> FlowInput<T> {
    /// Puts `value` into `inputs`, under the input's name.
    ///
    /// # Errors
    /// If `value` does not serialize as JSON (a map whose keys are not strings, say).
    pub fn insert(&self, inputs: &mut Inputs, value: &T) -> Result<(), serde_json::Error> {
        inputs.insert(self.name.to_string(), serde_json::to_value(value)?);
        Ok(())
    }
}

impl<T> Clone for FlowInput<T> {
    fn clone(&self) -> Self {
        Self::new(self.name.clone())
    }
}

impl<T> fmt::Debug for FlowInput<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowInput")
            .field("name", &self.name)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

/// A value fixed when the flow is built, as an atom's input: stored with the definition's
/// atom (an `inject`), not with the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Const<T>(pub T);

/// Where one of an atom's inputs comes from.
#[derive(Debug, Clone)]
pub(crate) enum ArgSource {
    /// The output of an atom (`atom`), provided as `symbol`.
    Atom { atom: Arc<str>, symbol: Arc<str> },
    /// A flow input.
    Input(Arc<str>),
    /// A constant.
    Const(Value),
}

/// How the input of a typed task is put together from the atom's inputs, which are named by
/// their position (`"0"`, `"1"`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// `()`: nothing.
    Unit,
    /// The input at this position.
    Arg(usize),
    /// A JSON array of these (a tuple or a list).
    Seq(Vec<Shape>),
}

impl Shape {
    /// The name of the atom's input at `position`.
    pub(crate) fn arg_name(position: usize) -> String {
        position.to_string()
    }

    fn build(&self, atom: &str, inputs: &HashMap<String, Value>) -> Result<Value, TaskError> {
        match self {
            Shape::Unit => Ok(Value::Null),
            Shape::Arg(k) => inputs.get(&Self::arg_name(*k)).cloned().ok_or_else(|| {
                TaskError::msg(format!("atom {atom:?} has no value for its input {k}"))
            }),
            Shape::Seq(items) => items
                .iter()
                .map(|s| s.build(atom, inputs))
                .collect::<Result<Vec<Value>, TaskError>>()
                .map(Value::Array),
        }
    }

    /// The input of atom `atom`, put together from its inputs and deserialized as `T`.
    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        atom: &str,
        inputs: &HashMap<String, Value>,
    ) -> Result<T, TaskError> {
        let value = self.build(atom, inputs)?;
        serde_path_to_error::deserialize(value).map_err(|e| {
            TaskError::msg(format!(
                "the input of atom {atom:?} does not fit its type, at `{}`",
                e.path()
            ))
            .with_cause(e.into_inner())
        })
    }
}

/// What wiring an atom's arguments gathers: where each input comes from, and what went wrong.
#[derive(Debug, Default)]
pub struct Wiring {
    pub(crate) args: Vec<ArgSource>,
    pub(crate) errors: Vec<WiringError>,
}

impl Wiring {
    fn push(&mut self, source: ArgSource) -> Shape {
        let k = self.args.len();
        self.args.push(source);
        Shape::Arg(k)
    }
}

pub(crate) mod sealed {
    /// Turns a value given as an atom's arguments into where its inputs come from, and the
    /// shape of the task's input. Only this crate implements it.
    pub trait Wire {
        /// Adds the inputs to `wiring`; returns the shape of the value they make.
        fn wire(&self, wiring: &mut super::Wiring) -> super::Shape;
    }
}

/// What can be given as an atom's input in a [`TypedFlow`](super::TypedFlow): a value of
/// type [`Args::Value`], known when the flow is built ([`Const`]) or when the run is created
/// ([`FlowInput`]), or made by another atom ([`Out`]), or several of these: a tuple (up to 8),
/// a `Vec` or a slice (for the outputs of a fan-out, [`Each`](super::Each)), or a reference
/// to any of them. `()` is no input at all.
///
/// The atom's task must take exactly `Value` as its [`Input`](super::TypedTask::Input): this
/// is how the compiler checks the wiring. Implemented by this crate only.
pub trait Args: sealed::Wire {
    /// The value the task gets.
    type Value;
}

impl<T> sealed::Wire for Out<T> {
    fn wire(&self, wiring: &mut Wiring) -> Shape {
        wiring.push(ArgSource::Atom {
            atom: self.atom.clone(),
            symbol: self.symbol.clone(),
        })
    }
}

impl<T> Args for Out<T> {
    type Value = T;
}

impl<T> sealed::Wire for FlowInput<T> {
    fn wire(&self, wiring: &mut Wiring) -> Shape {
        wiring.push(ArgSource::Input(self.name.clone()))
    }
}

impl<T> Args for FlowInput<T> {
    type Value = T;
}

impl<T: Serialize> sealed::Wire for Const<T> {
    fn wire(&self, wiring: &mut Wiring) -> Shape {
        let value = match serde_json::to_value(&self.0) {
            Ok(v) => v,
            Err(e) => {
                wiring.errors.push(WiringError::Constant {
                    input: wiring.args.len(),
                    error: e.to_string(),
                });
                Value::Null
            }
        };
        wiring.push(ArgSource::Const(value))
    }
}

impl<T: Serialize> Args for Const<T> {
    type Value = T;
}

impl<A: sealed::Wire + ?Sized> sealed::Wire for &A {
    fn wire(&self, wiring: &mut Wiring) -> Shape {
        (**self).wire(wiring)
    }
}

impl<A: Args + ?Sized> Args for &A {
    type Value = A::Value;
}

impl sealed::Wire for () {
    fn wire(&self, _wiring: &mut Wiring) -> Shape {
        Shape::Unit
    }
}

impl Args for () {
    type Value = ();
}

impl<A: sealed::Wire> sealed::Wire for [A] {
    fn wire(&self, wiring: &mut Wiring) -> Shape {
        Shape::Seq(self.iter().map(|a| a.wire(wiring)).collect())
    }
}

impl<A: Args> Args for [A] {
    type Value = Vec<A::Value>;
}

impl<A: sealed::Wire> sealed::Wire for Vec<A> {
    fn wire(&self, wiring: &mut Wiring) -> Shape {
        self.as_slice().wire(wiring)
    }
}

impl<A: Args> Args for Vec<A> {
    type Value = Vec<A::Value>;
}

macro_rules! tuple_args {
    ($($name:ident $index:tt),+) => {
        impl<$($name: sealed::Wire),+> sealed::Wire for ($($name,)+) {
            fn wire(&self, wiring: &mut Wiring) -> Shape {
                Shape::Seq(vec![$(self.$index.wire(wiring)),+])
            }
        }

        impl<$($name: Args),+> Args for ($($name,)+) {
            type Value = ($($name::Value,)+);
        }
    };
}

tuple_args!(A 0);
tuple_args!(A 0, B 1);
tuple_args!(A 0, B 1, C 2);
tuple_args!(A 0, B 1, C 2, D 3);
tuple_args!(A 0, B 1, C 2, D 3, E 4);
tuple_args!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_args!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_args!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wire(args: &impl Args) -> (Shape, Wiring) {
        let mut w = Wiring::default();
        let shape = args.wire(&mut w);
        (shape, w)
    }

    #[test]
    fn handles_become_positional_inputs_and_a_shape() {
        let a: Out<String> = Out::new("a", "a");
        let list = vec![Out::<u32>::new("x", "x"), Out::new("y", "y")];
        let (shape, w) = wire(&(&a, Const(7u8), (&list,), FlowInput::<bool>::new("flag")));
        assert_eq!(
            shape,
            Shape::Seq(vec![
                Shape::Arg(0),
                Shape::Arg(1),
                Shape::Seq(vec![Shape::Seq(vec![Shape::Arg(2), Shape::Arg(3)])]),
                Shape::Arg(4),
            ])
        );
        assert_eq!(w.args.len(), 5);
        assert!(w.errors.is_empty());
        let inputs: HashMap<String, Value> = [
            ("0", json!("net")),
            ("1", json!(7)),
            ("2", json!(1)),
            ("3", json!(2)),
            ("4", json!(true)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let value: (String, u8, (Vec<u32>,), bool) = shape.decode("atom", &inputs).unwrap();
        assert_eq!(value, ("net".to_owned(), 7, (vec![1, 2],), true));
        assert_eq!(Shape::Unit.decode::<()>("atom", &inputs).unwrap(), ());
    }

    #[test]
    fn a_bad_input_names_the_atom_and_where_it_does_not_fit() {
        let inputs: HashMap<String, Value> = [("0".to_owned(), json!({"id": 3}))].into();
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Net {
            id: String,
        }
        let err = Shape::Seq(vec![Shape::Arg(0)])
            .decode::<(Net,)>("boot", &inputs)
            .unwrap_err();
        assert!(
            err.to_string().contains("atom \"boot\"") && err.to_string().contains("`[0].id`"),
            "{err}"
        );
        let missing = Shape::Arg(1).decode::<u8>("boot", &inputs).unwrap_err();
        assert!(missing.to_string().contains("input 1"), "{missing}");
    }

    #[test]
    fn a_constant_that_does_not_serialize_is_a_wiring_error() {
        let bad: HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let (_, w) = wire(&(Const(1u8), Const(bad)));
        assert!(
            matches!(&w.errors[..], [WiringError::Constant { input: 1, .. }]),
            "{:?}",
            w.errors
        );
    }
}
