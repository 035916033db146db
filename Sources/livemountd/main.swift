print("livemountd")
