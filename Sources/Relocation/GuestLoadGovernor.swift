/// Paces the pump so the guest's I/O comes first (DESIGN.md invariant 4): a pure state machine fed with samples of
/// the guest's load every tick, answering how fast and how many copies in flight the pump may go.
///
/// - The guest is *busy* when it finished commands since the last tick. Idle: full speed (`maxRate`, `maxInFlight`).
///   Busy: one copy at a time at `busyRate` times a factor.
/// - The factor halves (a back-off) when the guest's mean latency in a busy tick is over `latencyTolerance` times
///   its baseline, and creeps back up otherwise. The baseline follows the guest's latency slowly, and only
///   downwards quickly, so it tracks what the guest sees when the pump is not in its way.
/// - Going from idle to busy is a back-off too.
public struct GuestLoadGovernor: Sendable {
    public struct Limits: Sendable, Equatable {
        /// Bytes per second (nil: no limit; 0: stop).
        public var bytesPerSecond: Double?
        public var maxInFlight: Int
    }

    /// Bytes per second with an idle guest (nil: unlimited).
    public var maxRate: Double?
    /// Bytes per second with a busy guest, before the factor (0: pause while the guest is busy).
    public var busyRate: Double
    public var maxInFlight: Int
    /// How much the guest's latency may rise over its baseline before the pump backs off.
    public var latencyTolerance = 1.15
    /// Lowest factor.
    public var minimumFactor = 1.0 / 32

    public private(set) var busy = false
    public private(set) var factor = 1.0
    public private(set) var backoffs: UInt64 = 0
    /// The guest's usual mean latency in nanoseconds (0: not known yet).
    public private(set) var baselineNanoseconds = 0.0
    private var last: GuestLoadSample?

    public init(maxRate: Double?, busyRate: Double, maxInFlight: Int) {
        self.maxRate = maxRate
        self.busyRate = busyRate
        self.maxInFlight = maxInFlight
    }

    /// Takes a sample of the guest's counters (about every 100 ms) and returns the limits until the next one.
    public mutating func tick(_ sample: GuestLoadSample) -> Limits {
        defer { last = sample }
        guard let last, sample.operations >= last.operations else { return limits }
        let operations = sample.operations - last.operations
        guard operations > 0 else {
            busy = false
            factor = min(1, factor * 2)
            return limits
        }
        if !busy {
            busy = true
            backoffs += 1
        }
        let mean = Double(sample.latencyNanoseconds &- last.latencyNanoseconds) / Double(operations)
        if baselineNanoseconds == 0 {
            baselineNanoseconds = mean
        } else if mean > baselineNanoseconds * latencyTolerance {
            factor = max(minimumFactor, factor / 2)
            backoffs += 1
            // Follow a lasting rise slowly (the guest's own pattern may have changed).
            baselineNanoseconds += (mean - baselineNanoseconds) * 0.02
        } else {
            factor = min(1, factor + 0.05)
            baselineNanoseconds += (mean - baselineNanoseconds) * (mean < baselineNanoseconds ? 0.3 : 0.05)
        }
        return limits
    }

    /// The limits as they stand.
    public var limits: Limits {
        guard busy else { return Limits(bytesPerSecond: maxRate, maxInFlight: maxInFlight) }
        let rate = busyRate * factor
        return Limits(bytesPerSecond: maxRate.map { min($0, rate) } ?? rate, maxInFlight: 1)
    }
}
