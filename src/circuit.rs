//! The circuit-breaker vocabulary, defined once for every native store: the
//! states a snapshot reports and the operations a store performs, with the
//! codes they cross to JS as. `lib/circuit.js` lists the same names in the
//! same order (a code is the index there), for the JS side and Cloudflare.

/// A circuit's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
  Closed = 0,
  Open = 1,
  HalfOpen = 2,
}

impl CircuitState {
  /// Every state, in the order of their codes.
  pub const ALL: [CircuitState; 3] = [
    CircuitState::Closed,
    CircuitState::Open,
    CircuitState::HalfOpen,
  ];

  /// The name Stoma's snapshots use.
  pub fn name(self) -> &'static str {
    match self {
      CircuitState::Closed => "closed",
      CircuitState::Open => "open",
      CircuitState::HalfOpen => "half-open",
    }
  }

  pub fn from_name(name: &str) -> Option<Self> {
    Self::ALL.into_iter().find(|state| state.name() == name)
  }

  /// The code the JS layer maps back to a name.
  pub fn code(self) -> u8 {
    self as u8
  }

  pub fn from_code(code: u32) -> Option<Self> {
    Self::ALL.get(code as usize).copied()
  }
}

/// An operation that answers a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitOperation {
  GetState = 0,
  RecordSuccess = 1,
  RecordFailure = 2,
  Transition = 3,
}

impl CircuitOperation {
  /// Every operation, in the order of their codes.
  pub const ALL: [CircuitOperation; 4] = [
    CircuitOperation::GetState,
    CircuitOperation::RecordSuccess,
    CircuitOperation::RecordFailure,
    CircuitOperation::Transition,
  ];

  pub fn from_code(code: u32) -> Option<Self> {
    Self::ALL.get(code as usize).copied()
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn codes_are_positions_and_names_round_trip() {
    for (index, state) in CircuitState::ALL.into_iter().enumerate() {
      assert_eq!(state.code() as usize, index);
      assert_eq!(CircuitState::from_code(index as u32), Some(state));
      assert_eq!(CircuitState::from_name(state.name()), Some(state));
    }
    for (index, operation) in CircuitOperation::ALL.into_iter().enumerate() {
      assert_eq!(operation as usize, index);
      assert_eq!(CircuitOperation::from_code(index as u32), Some(operation));
    }
    assert_eq!(CircuitState::from_code(3), None);
    assert_eq!(CircuitState::from_name("half_open"), None);
    assert_eq!(CircuitOperation::from_code(4), None);
  }
}
