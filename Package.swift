// swift-tools-version:6.0
// LiveMount: an iSCSI target that boots virtual machines straight out of
// their backups. Modules follow ../shared/DESIGN.md; dependencies run one way:
// transport (ISCSIProtocol, TargetServer) → SCSI → BlockDevice.
import PackageDescription

/// Settings for every LiveMount module. Release builds skip the runtime
/// exclusivity checks on the I/O path (about 3% of a 4 KiB read's CPU in
/// tools/bench/target-vs-tgt.sh profiles); debug builds, and so the tests, keep them.
let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "LiveMount",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "livemountd", targets: ["livemountd"]),
        .executable(name: "livemount", targets: ["livemount"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // MARK: - System libraries and C support
        .systemLibrary(name: "CLibAIO", path: "Sources/CLibAIO"),
        .systemLibrary(name: "CLibISCSI", path: "Sources/CLibISCSI"),
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite"),
        .systemLibrary(name: "CZstd", path: "Sources/CZstd"),
        .systemLibrary(name: "CCurl", path: "Sources/CCurl"),
        .target(name: "CCRC32C", cSettings: [.unsafeFlags(["-O3"])]),

        // MARK: - Storage foundations
        .target(
            name: "SQLiteStore",
            dependencies: ["CSQLite"],
            swiftSettings: strict
        ),
        .target(
            name: "BlockDevice",
            dependencies: [
                "CLibAIO", "CLibISCSI",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),

        // MARK: - Backups: repository, ingest, SSD-tier cache, live mounts
        .target(
            name: "Repository",
            dependencies: [
                "BlockDevice", "SQLiteStore", "CZstd", "CCurl", "CCRC32C",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "Cache",
            dependencies: [
                "Repository", "BlockDevice", "SQLiteStore", "CCRC32C",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "LiveMount",
            dependencies: [
                "Prefetch", "GuestFS", "Relocation", "Cache", "Repository", "BlockDevice", "SQLiteStore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),

        // MARK: - Prefetch: boot traces, training, plan following, replay; guest file systems
        .target(
            name: "Prefetch",
            dependencies: [
                "SQLiteStore", "BlockDevice",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .target(name: "GuestFS", swiftSettings: strict),

        // MARK: - Relocation: drain a live mount to its primary LUN and switch over
        .target(
            name: "Relocation",
            dependencies: [
                "BlockDevice", "SQLiteStore", "CCRC32C",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),

        // MARK: - SCSI (SPC-4 / SBC-4 emulation)
        .target(
            name: "SCSI",
            dependencies: [
                "BlockDevice", "SQLiteStore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),

        // MARK: - Transport (RFC 7143)
        .target(
            name: "ISCSIProtocol",
            dependencies: [
                "CCRC32C",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "TargetServer",
            dependencies: [
                "ISCSIProtocol", "SCSI", "BlockDevice",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),

        // MARK: - Configuration (TOML file and command line → ServerConfiguration)
        .target(
            name: "LiveMountConfig",
            dependencies: [
                "TargetServer", "SCSI", "BlockDevice", "Prefetch", "Relocation",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),

        // MARK: - Control API (HTTP/JSON on a Unix socket)
        .target(
            name: "ControlPlane",
            dependencies: [
                "Prefetch", "Relocation",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),

        // MARK: - Fuzzing (tools/fuzz/run.sh)
        .target(
            name: "ISCSIFuzzHarness",
            dependencies: ["ISCSIProtocol", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: strict
        ),
        .executableTarget(name: "PDUFuzzer", dependencies: ["ISCSIFuzzHarness"], swiftSettings: strict),

        // MARK: - Executables
        .executableTarget(
            name: "livemountd",
            dependencies: [
                "LiveMountConfig", "TargetServer", "SCSI", "BlockDevice", "LiveMount", "Cache", "Repository",
                "ControlPlane", "Prefetch", "GuestFS", "Relocation", "SQLiteStore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strict
        ),

        .executableTarget(
            name: "livemount",
            dependencies: [
                "Repository", "ControlPlane", "BlockDevice", "Prefetch", "GuestFS", "Relocation",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),

        // MARK: - Tests
        .testTarget(
            name: "ISCSIProtocolTests",
            dependencies: [
                "ISCSIProtocol", "ISCSIFuzzHarness", "CCRC32C", .product(name: "NIOCore", package: "swift-nio"),
            ],
            resources: [.copy("FuzzRegressions")]
        ),
        .testTarget(
            name: "BlockDeviceTests",
            dependencies: ["BlockDevice", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(name: "SQLiteStoreTests", dependencies: ["SQLiteStore"]),
        .testTarget(
            name: "RepositoryTests",
            dependencies: [
                "Repository", "BlockDevice", "SQLiteStore", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"), .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "CacheTests",
            dependencies: [
                "Cache", "Repository", "BlockDevice", "SQLiteStore", .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "LiveMountTests",
            dependencies: [
                "LiveMount", "Cache", "Repository", "BlockDevice", "SCSI", "TargetServer", "ControlPlane",
                "LiveMountConfig", "CLibISCSI", "Prefetch", "GuestFS", "Relocation",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "PrefetchTests",
            dependencies: [
                "Prefetch", "BlockDevice", "SQLiteStore", "SCSI", "TargetServer",
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "Logging", package: "swift-log"),
            ],
            resources: [.copy("Traces")]
        ),
        .testTarget(name: "GuestFSTests", dependencies: ["GuestFS"]),
        .testTarget(
            name: "RelocationTests",
            dependencies: [
                "Relocation", "BlockDevice", "SQLiteStore", "CLibISCSI",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "SCSITests",
            dependencies: ["SCSI", "BlockDevice", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "LiveMountConfigTests",
            dependencies: ["LiveMountConfig", "Prefetch", "Relocation"]
        ),
        .testTarget(
            name: "TargetServerTests",
            dependencies: [
                "TargetServer", "ISCSIProtocol", "SCSI", "BlockDevice", "CLibISCSI",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
    ]
)
