package main

// The results of one run, as written to bench/results/<date>-<host>.json.
// Implementation keys are implPlumb, implRef and implFloor.

const (
	implPlumb = "plumb"
	implRef   = "reference"
	implFloor = "floor"
)

// Results is one benchmark run.
type Results struct {
	Date    string  `json:"date"` // RFC 3339, UTC
	Host    string  `json:"hostname"`
	Machine Machine `json:"machine"`
	Config  Config  `json:"config"`
	// Plumb is the commit measured, "+dirty" when the work tree had
	// uncommitted changes.
	Plumb string `json:"plumb_commit"`
	// Chain names the plugins every ADD/DEL ran, in order.
	Chain []string `json:"chain"`
	// Binaries maps implementation -> binary -> size in bytes.
	Binaries map[string]map[string]int64 `json:"binary_bytes"`
	Backends []BackendResult             `json:"backends"`
	Targets  []Target                    `json:"targets"`
	// RootNSUnchanged: the machine's own namespace had the same netns
	// list, nft ruleset and iptables rules after the run as before.
	RootNSUnchanged bool     `json:"root_namespace_unchanged"`
	Notes           []string `json:"notes,omitempty"`
	WallSeconds     float64  `json:"wall_seconds"`
}

// Machine describes where the run happened.
type Machine struct {
	Kernel   string `json:"kernel"`
	CPUModel string `json:"cpu_model"`
	CPUs     int    `json:"cpus"`
	MemMiB   int    `json:"mem_mib"`
	Go       string `json:"go"`
	Iptables string `json:"iptables"`
	Nft      string `json:"nft"`
	// Load is /proc/loadavg before and after the run: the machine may be
	// shared, and other work there slows both implementations alike.
	Load [2]string `json:"loadavg_before_after"`
}

// Config is what the run was asked to do.
type Config struct {
	Attached   []int    `json:"attached"`         // N levels
	Workers    []int    `json:"workers"`          // parallel worker counts
	Repeat     int      `json:"repeat"`           // ADD/DEL pairs per N level and implementation
	Parallel   int      `json:"parallel_count"`   // containers per parallel run
	Backends   []string `json:"backends"`         // iptables, nftables
	RefVersion string   `json:"reference"`        // containernetworking/plugins version
	Portmap    bool     `json:"portmap_in_chain"` // plumb's portmap built, so both chains end in portmap
	Quick      bool     `json:"quick"`
}

// BackendResult is everything measured with one firewall backend.
type BackendResult struct {
	Backend string        `json:"backend"`
	Levels  []LevelResult `json:"levels"`
	// Fill is every ADD that built up the attached containers, per
	// implementation; Growth is its p50 per bucket of 100 attached.
	Fill   map[string]Stats    `json:"fill_add"`
	Growth map[string][]Bucket `json:"add_growth"`
	// SerialDupIPs counts addresses given to more than one attached
	// container; Reservations is host-local's file count after the fill.
	SerialDupIPs map[string]int     `json:"serial_duplicate_ips"`
	Reservations map[string]int     `json:"reservations_after_fill,omitempty"`
	Parallel     []ParallelResult   `json:"parallel"`
	RSS          map[string]RSSMap  `json:"peak_rss_kib"`
	Calls        map[string]CallMap `json:"plugin_calls"` // impl -> "bridge ADD" -> latency of the plugin process

	notes []string
}

func (b *BackendResult) note(s string) { b.notes = append(b.notes, s) }

// RSSMap is plugin binary -> peak resident set in KiB.
type RSSMap map[string]int64

// CallMap is "plugin VERB" -> latency of that plugin's process.
type CallMap map[string]Stats

// LevelResult is the probe ADD/DEL latencies with Attached containers
// already on the bridge.
type LevelResult struct {
	Attached int              `json:"attached"`
	ADD      map[string]Stats `json:"add"`
	DEL      map[string]Stats `json:"del"`
}

// Bucket is the ADD p50 while From..To-1 containers were attached.
type Bucket struct {
	From  int     `json:"from"`
	To    int     `json:"to"`
	Count int     `json:"count"`
	P50   float64 `json:"p50_ms"`
}

// ParallelResult is one burst of Containers ADDs then DELs by Workers
// concurrent callers.
type ParallelResult struct {
	Workers    int                     `json:"workers"`
	Containers int                     `json:"containers"`
	ByImpl     map[string]ParallelImpl `json:"by_impl"`
}

// ParallelImpl is one implementation's burst.
type ParallelImpl struct {
	ADDPerSec    float64 `json:"add_per_s"`
	DELPerSec    float64 `json:"del_per_s"`
	ADDFailures  int     `json:"add_failures"`
	DELFailures  int     `json:"del_failures"`
	DupIPs       int     `json:"duplicate_ips"`
	Reservations int     `json:"reservations_after_add,omitempty"`
	ADD          Stats   `json:"add_latency"`
	DEL          Stats   `json:"del_latency"`
	FirstError   string  `json:"first_error,omitempty"`
}

// Target is one of the goals, checked against this run.
type Target struct {
	Backend string  `json:"backend,omitempty"`
	What    string  `json:"what"`
	Goal    string  `json:"goal"`
	Got     string  `json:"got"`
	Value   float64 `json:"value"`
	Met     bool    `json:"met"`
}
