//! The order of one group's offset writes: a first-come-first-served
//! shared/exclusive lock whose place in line is taken when
//! [`WriteOrder::enter`] is *called*, not when its future is first polled.
//!
//! Commits take it shared: any number run at once, each holding it from
//! before its append until its map update, so commits pipeline (their
//! fsyncs share group commits) while their appends, made right after the
//! grant with no await in between, keep the order in which they entered.
//! Tombstones (DeleteGroups, OffsetDelete) and the compaction of
//! `__consumer_offsets` take it exclusive: they wait until every earlier
//! commit of the group has applied its map update, and every later write
//! waits for them. The map then applies writes in log order, which is
//! their request order on a connection (`server::ordering`).
//!
//! Contract: shard-local (`Rc`); grants follow entry order strictly, a
//! shared entry behind a waiting exclusive one waits too.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use crate::runtime::Notify;

/// How a write holds the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Commits: together with other shared holders.
    Shared,
    /// Tombstones and compaction: alone.
    Exclusive,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Entries not granted yet, in entry order.
    waiting: VecDeque<(u64, Mode)>,
    /// Shared holders granted and not released.
    shared: usize,
    /// An exclusive holder is granted and not released.
    exclusive: bool,
}

/// One group's write order. See the module documentation.
#[derive(Default)]
pub struct WriteOrder {
    state: RefCell<State>,
    /// An entry was granted, released or abandoned.
    changed: Notify,
}

impl WriteOrder {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Take a place in line now. The returned ticket is granted, in entry
    /// order, by [`Ticket::granted`].
    pub fn enter(self: &Rc<Self>, mode: Mode) -> Ticket {
        let mut st = self.state.borrow_mut();
        let id = st.next_id;
        st.next_id += 1;
        st.waiting.push_back((id, mode));
        Ticket {
            order: Some(self.clone()),
            id,
            mode,
        }
    }
}

/// A place in line; dropping it before the grant gives the place up.
pub struct Ticket {
    /// `None` once granted.
    order: Option<Rc<WriteOrder>>,
    id: u64,
    mode: Mode,
}

impl Ticket {
    /// Wait until this entry is first in line and its mode is compatible with
    /// the holders, then hold the group until the returned guard is dropped.
    pub async fn granted(mut self) -> Granted {
        let order = self.order.clone().expect("a ticket is granted once");
        loop {
            let listener = order.changed.listen();
            {
                let mut st = order.state.borrow_mut();
                let first = st.waiting.front().map(|(id, _)| *id) == Some(self.id);
                let compatible = match self.mode {
                    Mode::Shared => !st.exclusive,
                    Mode::Exclusive => !st.exclusive && st.shared == 0,
                };
                if first && compatible {
                    st.waiting.pop_front();
                    match self.mode {
                        Mode::Shared => st.shared += 1,
                        Mode::Exclusive => st.exclusive = true,
                    }
                    drop(st);
                    self.order = None;
                    // The next in line may be compatible too (shared after shared).
                    order.changed.notify_all();
                    return Granted {
                        order,
                        mode: self.mode,
                    };
                }
            }
            listener.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(order) = self.order.take() {
            order
                .state
                .borrow_mut()
                .waiting
                .retain(|(id, _)| *id != self.id);
            order.changed.notify_all();
        }
    }
}

/// The group held by one write; released on drop.
pub struct Granted {
    order: Rc<WriteOrder>,
    mode: Mode,
}

impl Drop for Granted {
    fn drop(&mut self) {
        let mut st = self.order.state.borrow_mut();
        match self.mode {
            Mode::Shared => st.shared -= 1,
            Mode::Exclusive => st.exclusive = false,
        }
        drop(st);
        self.order.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Polled in reverse entry order, tickets are still granted in entry
    /// order; shared holders overlap, an exclusive one waits for them and
    /// holds back the shared entries behind it.
    #[test]
    fn grants_follow_entry_order() {
        crate::runtime::block_on_test(|| async {
            let order = WriteOrder::new();
            let log = Rc::new(RefCell::new(Vec::new()));
            let a = order.enter(Mode::Shared);
            let b = order.enter(Mode::Shared);
            let x = order.enter(Mode::Exclusive);
            let c = order.enter(Mode::Shared);
            let task = |name: &'static str, t: Ticket, hold: bool| {
                let log = log.clone();
                crate::runtime::spawn(async move {
                    let g = t.granted().await;
                    log.borrow_mut().push(name);
                    if hold {
                        crate::runtime::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    drop(g);
                })
            };
            let tc = task("c", c, false);
            let tx = task("x", x, true);
            let tb = task("b", b, true);
            let ta = task("a", a, true);
            crate::runtime::sleep(std::time::Duration::from_millis(5)).await;
            assert_eq!(*log.borrow(), vec!["a", "b"], "shared a and b overlap");
            ta.await;
            tb.await;
            tx.await;
            tc.await;
            assert_eq!(*log.borrow(), vec!["a", "b", "x", "c"]);
            let st = order.state.borrow();
            assert!(st.waiting.is_empty() && st.shared == 0 && !st.exclusive);
        });
    }

    /// A ticket dropped before its grant gives its place up.
    #[test]
    fn abandoned_ticket_leaves_the_line() {
        crate::runtime::block_on_test(|| async {
            let order = WriteOrder::new();
            let a = order.enter(Mode::Exclusive);
            let b = order.enter(Mode::Shared);
            drop(a);
            let _g = b.granted().await;
            assert!(order.state.borrow().waiting.is_empty());
        });
    }
}
