import Testing

@Test func placeholderTargetServerTests() {}
