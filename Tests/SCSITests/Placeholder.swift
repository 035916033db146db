import Testing

@Test func placeholderSCSITests() {}
