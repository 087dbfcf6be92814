//! Event types and channel names, each kept once per shard and named by a small number in every
//! event that has it: an event's 64 bytes can hold two `u16`s, not two strings.
//!
//! Bounded: at most [`NAMES_MAX`] distinct names. A name first seen beyond that is not kept in
//! memory (the event shows no type or channel until the index is asked; its record keeps it).

use std::collections::HashMap;
use std::rc::Rc;

/// Distinct names kept, at most (the number 0 stands for none).
pub const NAMES_MAX: usize = u16::MAX as usize;

/// Interned names.
#[derive(Debug, Default)]
pub struct Names {
    list: Vec<Rc<str>>,
    numbers: HashMap<Rc<str>, u16>,
}

impl Names {
    /// The number of `name`, keeping it if it is new and there is room; 0 when there is none.
    pub fn intern(&mut self, name: &str) -> u16 {
        if let Some(number) = self.numbers.get(name) {
            return *number;
        }
        if self.list.len() >= NAMES_MAX {
            return 0;
        }
        let name: Rc<str> = Rc::from(name);
        self.list.push(Rc::clone(&name));
        // The list's length is at most NAMES_MAX, so the number fits.
        let number = u16::try_from(self.list.len()).unwrap_or(0);
        self.numbers.insert(name, number);
        number
    }

    /// The number of `name` if it is kept (no new entry).
    pub fn find(&self, name: &str) -> Option<u16> {
        self.numbers.get(name).copied()
    }

    /// The name of `number` (`None` for 0 or an unknown number).
    pub fn get(&self, number: u16) -> Option<&str> {
        usize::from(number).checked_sub(1).and_then(|index| self.list.get(index)).map(|name| &**name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // The same name always gets the same number, and 0 means none.
    #[test]
    fn names_are_numbered_once() {
        let mut names = Names::default();
        let order = names.intern("order.created");
        assert_ne!(order, 0);
        assert_eq!(names.intern("order.created"), order);
        let other = names.intern("billing");
        assert_ne!(other, order);
        assert_eq!(names.get(order), Some("order.created"));
        assert_eq!(names.get(0), None);
        assert_eq!(names.find("billing"), Some(other));
        assert_eq!(names.find("nope"), None);
    }
}
