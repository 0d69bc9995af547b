# Installs pqpool from BINARY_DIR into PREFIX, then builds and runs the consumer project
# against the installed package only (find_package(pqpool CONFIG REQUIRED)).
file(REMOVE_RECURSE ${PREFIX} ${CONSUMER_BUILD})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${PREFIX} COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/install/consumer -B ${CONSUMER_BUILD}
                        -G ${GENERATOR} -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_PREFIX_PATH=${PREFIX}
                        -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${CONSUMER_BUILD} COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CONSUMER_BUILD}/consumer COMMAND_ERROR_IS_FATAL ANY)
