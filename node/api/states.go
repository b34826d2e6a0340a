package api

// State is a host's state for one layer's activation, as each host reports
// it. The daemon and the CLI share these constants: a state is never
// compared as free text, and a failure's reason is the Detail beside it,
// never part of the state.
type State string

// Host states of an activation.
const (
	StateRequested    State = "requested"
	StateFetching     State = "fetching"
	StateDeactivating State = "deactivating"
	StateActive       State = "active"
	StateInactive     State = "inactive"
	StateFailed       State = "failed"
	StateWaitingSeat  State = "waiting-for-seat"
)

// Valid reports whether s is one of the states above.
func (s State) Valid() bool {
	switch s {
	case StateRequested, StateFetching, StateDeactivating, StateActive, StateInactive, StateFailed, StateWaitingSeat:
		return true
	}
	return false
}

// Op is what an activation asks of the hosts it selects.
type Op string

// Activation operations.
const (
	OpActivate   Op = "activate"
	OpDeactivate Op = "deactivate"
	// OpDeactivateDiscard deactivates even where the view was changed
	// locally, throwing those changes away (deactivate --discard-changes).
	OpDeactivateDiscard Op = "deactivate-discard"
)

// Valid reports whether o is one of the operations above.
func (o Op) Valid() bool {
	return o == OpActivate || o == OpDeactivate || o == OpDeactivateDiscard
}

// Deactivates reports whether o takes a layer away.
func (o Op) Deactivates() bool { return o == OpDeactivate || o == OpDeactivateDiscard }

// Mode is how an activated layer appears at its path.
type Mode string

// Exposure modes.
const (
	// ModeAuto is fuse where the host serves FUSE and mounts overlays,
	// else overlay where it mounts overlays, else materialized.
	ModeAuto Mode = "auto"
	// ModeFUSE serves the layer from the chunk store through FUSE (no
	// copy of its bytes) and mounts an overlay over the path with that
	// view as its lower layer, so writes are kept in the data dir.
	ModeFUSE Mode = "fuse"
	// ModeOverlay mounts an overlay over the path.
	ModeOverlay Mode = "overlay"
	// ModeMaterialized swaps a directory in at the path.
	ModeMaterialized Mode = "materialized"
)

// Overlaid reports whether the mode mounts an overlay at the path, whose
// upper directory holds the writes made to the view.
func (m Mode) Overlaid() bool { return m == ModeOverlay || m == ModeFUSE }

// DaemonState is whether the daemon has opened its store yet.
type DaemonState string

// Daemon states of GET /v1/status.
const (
	DaemonStarting DaemonState = "starting"
	DaemonReady    DaemonState = "ready"
)

// Reach is what this host knows of another host's liveness.
type Reach string

// Reach values.
const (
	ReachSelf        Reach = "self"        // this host
	ReachUp          Reach = "up"          // connected, or heard from recently
	ReachUnreachable Reach = "unreachable" // not heard from for a while: its rows may be stale
	ReachGone        Reach = "gone"        // not heard from for longer than the gone time
)
