// The livemount command-line tool.
print("livemount")
