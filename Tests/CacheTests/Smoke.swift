import Testing
@testable import Cache
