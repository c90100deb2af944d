'use strict'
// The circuit-breaker vocabulary of every JS store, written once: the states
// a snapshot reports and the operations a store performs, each known by its
// index here where a code crosses to native code (src/circuit.rs defines the
// same codes). Like lib/validate.js it requires nothing, so the Cloudflare
// entry bundles it for workerd.

/** Circuit states, in the order of their codes. */
const CIRCUIT_STATES = ['closed', 'open', 'half-open']

/** Store operations that answer a snapshot, in the order of their codes. */
const CIRCUIT_OPERATIONS = ['getState', 'recordSuccess', 'recordFailure', 'transition']

/** Every method of a circuit-breaker store, as stats() counts them. */
const CIRCUIT_METHODS = [...CIRCUIT_OPERATIONS, 'reset']

module.exports = { CIRCUIT_STATES, CIRCUIT_OPERATIONS, CIRCUIT_METHODS }
