import Testing

@Test func placeholderBlockDeviceTests() {}
